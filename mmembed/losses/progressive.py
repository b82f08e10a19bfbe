"""Progressively softened labels (LightCLIP's instance-level loss, L_ins).

Image-text pairs in a batch are not strictly one-to-one (several captions fit one image, and
in-batch "negatives" can match), so the one-hot CLIP targets are softened: each row keeps
``1 - alpha`` on its own pair and spreads ``alpha`` over the other columns, either in
proportion to the current (detached) similarities or uniformly. ``alpha`` ramps up from 0
during training (:func:`alpha_schedule`), so early training is plain CLIP.

With ``alpha = 0`` :func:`soft_clip_loss` is exactly the CLIP loss.

References:
    Nie et al., "LightCLIP: Learning Multi-Level Interaction for Lightweight Vision-Language
    Models", 2023, https://arxiv.org/abs/2312.00674 (Sec. 3, progressive softened labels);
    the formula and schedule follow the method specification's reconstruction, whose choices
    are options here.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from mmembed.losses.soft_targets import soft_target_cross_entropy

__all__ = ["alpha_schedule", "progressive_targets", "soft_clip_loss"]

SoftMode = Literal["similarity", "uniform"]


@torch.no_grad()
def progressive_targets(logits: Tensor, alpha: float, mode: SoftMode = "similarity", offset: int = 0) -> Tensor:
    """Softened target rows for a (local rows x all columns) logit matrix.

    ``Q[i, i + offset] = 1 - alpha``; the other columns share ``alpha``: in proportion to
    ``softmax_{k != i+offset}(logits[i, k])`` (``similarity``, computed without gradient) or
    equally (``uniform``, ``alpha / (N - 1)``).

    Args:
        logits: Scaled similarities; row ``i``'s positive is column ``i + offset``.
        alpha: Mass moved off the positive, in [0, 1].
        mode: ``similarity`` (the default reconstruction) or ``uniform`` (label smoothing over
            the other columns, the ablation).
        offset: Column of row 0's positive (``rank * local_batch`` with a gathered batch).

    Returns:
        Non-negative rows summing to 1 (float32 or the logits' dtype, whichever is wider).

    Shapes:
        logits: (B, N) with N >= B + offset -> (B, N).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if mode not in ("similarity", "uniform"):
        raise ValueError(f"mode must be 'similarity' or 'uniform', got {mode!r}")
    b, n = logits.shape
    if n < b + offset or n < 2:
        raise ValueError(f"logits {tuple(logits.shape)} cannot hold positives at columns {offset}..{offset + b - 1}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = torch.arange(b, device=logits.device)
    pos = torch.zeros(b, n, dtype=torch.bool, device=logits.device)
    pos[rows, rows + offset] = True
    if mode == "uniform":
        off = torch.full((b, n), 1.0 / (n - 1), dtype=dtype, device=logits.device)
    else:
        off = torch.softmax(logits.detach().to(dtype).masked_fill(pos, float("-inf")), dim=1)
    targets = alpha * off.masked_fill(pos, 0.0)
    targets[rows, rows + offset] = 1.0 - alpha
    return targets


def soft_clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    alpha: float,
    mode: SoftMode = "similarity",
) -> Tensor:
    """Symmetric CLIP loss with progressively softened labels (LightCLIP's L_ins).

    ``L = (CE_soft(Z, Q(Z)) + CE_soft(Z^T, Q(Z^T))) / 2`` with ``Z = s * image @ text^T`` and
    :func:`progressive_targets` ``Q``. At ``alpha = 0`` it equals the CLIP loss exactly.

    Args:
        image_features: L2-normalised image embeddings.
        text_features: L2-normalised text embeddings (pair ``i`` is row ``i`` of both).
        logit_scale: Multiplier ``s = 1 / temperature``.
        alpha: Softening (0: hard CLIP labels).
        mode: ``similarity`` or ``uniform`` softening.

    Returns:
        Scalar loss.

    Shapes:
        image_features, text_features: (B, D) -> ().
    """
    logits = logit_scale * image_features @ text_features.T  # (B, B) image x text
    loss_i2t = soft_target_cross_entropy(logits, progressive_targets(logits, alpha, mode), validate=False)
    loss_t2i = soft_target_cross_entropy(logits.T, progressive_targets(logits.T, alpha, mode), validate=False)
    return 0.5 * (loss_i2t + loss_t2i)


def alpha_schedule(
    progress: float, alpha_max: float = 0.2, shape: Literal["linear", "cosine"] = "linear"
) -> float:
    """Softening at a point of training: 0 at the start, ``alpha_max`` at the end.

    Args:
        progress: Fraction of training done, clipped to [0, 1] (e.g. ``step / total_steps``).
        alpha_max: Final softening (0.2 by default).
        shape: ``linear`` (``alpha_max * t``) or ``cosine`` (``alpha_max * (1 - cos(pi t)) / 2``).

    Returns:
        ``alpha`` for this point, non-decreasing in ``progress``.
    """
    t = min(max(float(progress), 0.0), 1.0)
    if shape == "linear":
        return alpha_max * t
    if shape == "cosine":
        return alpha_max * (1.0 - math.cos(math.pi * t)) / 2.0
    raise ValueError(f"shape must be 'linear' or 'cosine', got {shape!r}")
