"""LinCIR's objective (Lightning-free): the masked caption, with phi's token in every ``$`` slot, must
encode back to the caption's own embedding.

References:
    Gu et al., "Language-only Training of Zero-shot Composed Image Retrieval" (LinCIR), CVPR 2024,
    https://arxiv.org/abs/2312.01998.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lincir_loss"]


def lincir_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between the masked caption's embedding (with phi's token) and the
    caption's own embedding (a constant target).

    Shapes:
        predicted (B, D), target (B, D) -> ().
    """
    return torch.nn.functional.mse_loss(predicted.float(), target.detach().float())
