"""SigLIPModule: a dual encoder trained with SigLIP's pairwise sigmoid loss.

Every image-text pair of the batch is an independent binary classification (matching pairs
positive, all others negative), with a learnable temperature and bias; no softmax over the batch,
so the loss needs no global normalisation across ranks. Everything else (optimisation, retrieval
evaluation in both directions, ranked pictures, open_clip export) is :class:`EmbeddingModule`'s.

References:
    Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP), ICCV 2023,
    https://arxiv.org/abs/2303.15343 (Algorithm 1; Sec. 3.2: t' = log 10, b = -10).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mmembed.lit.embedding_module import EmbeddingModule
from mmembed.losses.sigmoid import SigLipLoss

__all__ = ["SigLIPModule"]


class SigLIPModule(EmbeddingModule):
    """SigLIP on any :class:`~mmembed.nn.encoders.base.Embedder`.

    Args:
        encoder: The dual encoder (e.g. :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`).
        loss: The sigmoid loss (None: :class:`~mmembed.losses.sigmoid.SigLipLoss` with the paper's
            initialisation, temperature 0.1 and bias -10). Its scale and bias are logged as
            ``train/logit_scale`` and ``train/logit_bias``.
        **kwargs: See :class:`~mmembed.lit.embedding_module.EmbeddingModule` and
            :class:`~mmembed.lit.module.TrainModule`.

    Shapes:
        training batch: image (B, 3, H, W), text (B, L) -> loss ().
    """

    def __init__(self, encoder: nn.Module, loss: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(encoder=encoder, loss=SigLipLoss() if loss is None else loss, **kwargs)
