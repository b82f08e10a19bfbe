"""RDE's training-time caption augmentation on token ids."""

from __future__ import annotations

import torch
from torch import Tensor

from mmembed.nn.mlm import FIRST_SPECIAL_ID, MASK_ID, word_positions

__all__ = ["FIRST_SPECIAL_ID", "MASK_ID", "augment_tokens"]


def augment_tokens(
    ids: Tensor,
    p: float = 0.2,
    mask_id: int = MASK_ID,
    vocab_max: int = 49404,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Randomly alter word tokens: mask (60%), replace by a random id (20%) or delete (20%).

    Each word token (``0 < id < 49405``) is altered with probability ``p``. A deleted
    token is removed and later tokens shift left, with zero padding at the end, so
    SOT/EOT and the EOT-argmax pooling stay valid.

    Args:
        ids: Token ids (SOT ... EOT, zero padded).
        p: Probability that a word token is altered.
        mask_id: Id written for a masked token.
        vocab_max: Largest id a random replacement may take (ids drawn from ``[1, vocab_max]``).
        generator: Optional torch generator for reproducibility.

    Returns:
        Augmented ids, same shape and dtype.

    Shapes:
        ids: (B, L) -> (B, L).
    """
    if p <= 0:
        return ids
    word = word_positions(ids)  # (B, L)
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    kind = torch.rand(ids.shape, generator=generator, device=ids.device)
    altered = word & (u < p)
    out = ids.clone()
    out[altered & (kind < 0.6)] = mask_id
    rand_ids = torch.randint(1, vocab_max + 1, ids.shape, generator=generator, device=ids.device)
    replace = altered & (kind >= 0.6) & (kind < 0.8)
    out[replace] = rand_ids[replace]
    delete = altered & (kind >= 0.8)
    if delete.any():
        keep = ~delete
        # stable compaction: kept tokens move left in order, the tail is zero padded
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # (B, L)
        out = torch.gather(out, 1, order)
        n_keep = keep.sum(1, keepdim=True)  # (B, 1)
        out[torch.arange(ids.shape[1], device=ids.device)[None, :] >= n_keep] = 0
    return out
