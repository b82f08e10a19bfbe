"""RDE's training-time caption augmentation on token ids."""

from __future__ import annotations

import torch
from torch import Tensor

from mmembed.nn.mlm import word_positions
from mmembed.types import SpecialTokens

__all__ = ["augment_tokens"]


def augment_tokens(
    ids: Tensor,
    p: float,
    special: SpecialTokens,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Randomly alter word tokens: mask (60%), replace by a random id (20%) or delete (20%).

    Each word token (:func:`~mmembed.nn.mlm.word_positions`) is altered with probability ``p``. A deleted
    token is removed and later tokens shift left, with zero padding at the end, so
    SOT/EOT and the EOT-argmax pooling stay valid.

    Args:
        ids: Token ids (SOT ... EOT, zero padded).
        p: Probability that a word token is altered.
        special: The encoder's special ids: ``special.mask`` is written for a masked token and
            random replacements are drawn from ``[1, special.max_word_id]``.
        generator: Optional torch generator for reproducibility.

    Returns:
        Augmented ids, same shape and dtype.

    Shapes:
        ids: (B, L) -> (B, L).
    """
    if p <= 0:
        return ids
    mask_id, vocab_max = special.mask, special.max_word_id
    if mask_id is None:
        raise ValueError("caption augmentation needs a tokenizer with a mask token (special_tokens.mask is None)")
    word = word_positions(ids, special)  # (B, L)
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
