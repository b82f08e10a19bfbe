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
from torch import Tensor, nn

from mmembed.distributed import gather_with_grad, get_rank, get_world_size, is_distributed
from mmembed.losses.soft_targets import soft_target_cross_entropy
from mmembed.nn.heads import LogitScale

__all__ = ["ProgressiveSoftClipLoss", "alpha_schedule", "progressive_targets", "soft_clip_loss"]

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
    image_all: Tensor | None = None,
    text_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """Symmetric CLIP loss with progressively softened labels (LightCLIP's L_ins).

    ``L = (CE_soft(Z_it, Q(Z_it)) + CE_soft(Z_ti, Q(Z_ti))) / 2`` with ``Z_it = s * image @
    text_all^T``, ``Z_ti = s * text @ image_all^T`` and :func:`progressive_targets` ``Q``
    (positives at columns ``offset + i``). At ``alpha = 0`` it equals the CLIP loss exactly.
    Without ``*_all`` the columns are the local batch; with the gathered embeddings of all
    ranks and ``offset = rank * B`` (the "local loss" scheme) the softening sees the full
    gathered row, so the mean over ranks equals the single-process loss on the whole batch.

    Args:
        image_features: L2-normalised image embeddings (rows).
        text_features: L2-normalised text embeddings (rows; pair ``i`` is row ``i`` of both).
        logit_scale: Multiplier ``s = 1 / temperature``.
        alpha: Softening (0: hard CLIP labels).
        mode: ``similarity`` or ``uniform`` softening.
        image_all: Image columns for text->image (gathered), or None.
        text_all: Text columns for image->text (gathered), or None.
        offset: Column of the first local pair in ``*_all``.

    Returns:
        Scalar loss.

    Shapes:
        image_features, text_features: (B, D); image_all, text_all: (M, D) -> ().
    """
    if (image_all is None) != (text_all is None):
        raise ValueError("pass both image_all and text_all, or neither")
    if image_all is None or text_all is None:
        image_all, text_all = image_features, text_features
    logits_it = logit_scale * image_features @ text_all.T  # (B, M) image x text
    logits_ti = logit_scale * text_features @ image_all.T  # (B, M) text x image
    loss_i2t = soft_target_cross_entropy(logits_it, progressive_targets(logits_it, alpha, mode, offset), validate=False)
    loss_t2i = soft_target_cross_entropy(logits_ti, progressive_targets(logits_ti, alpha, mode, offset), validate=False)
    return 0.5 * (loss_i2t + loss_t2i)


class ProgressiveSoftClipLoss(nn.Module):
    """:func:`soft_clip_loss` with a learnable temperature and cross-rank gathering.

    The current softening is the attribute ``alpha``, set by the training loop (e.g. from
    :func:`alpha_schedule` every step). Gathering follows
    :class:`~mmembed.losses.contrastive.ClipLoss` (``local_loss``: local rows against all
    gathered columns, the same loss and gradients as one process on the whole batch).

    Args:
        init_temperature: Initial temperature (CLIP: 0.07, a log-scale of 2.6593).
        learn_temperature: Whether the log-scale is trainable.
        max_logit_scale: Clamp on the logit scale.
        alpha: Initial softening.
        mode: ``similarity`` or ``uniform``.
        local_loss: Local rows vs. all columns (True) or the whole gathered matrix (False).
        gather: Gather embeddings across ranks (False: local in-batch columns only).

    Shapes:
        image_emb, text_emb: (B, D), L2-normalised -> ().
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        alpha: float = 0.0,
        mode: SoftMode = "similarity",
        local_loss: bool = True,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.logit_scale = LogitScale(init_temperature, learn_temperature, max_logit_scale)
        self.alpha, self.mode, self.local_loss, self.gather = alpha, mode, local_loss, gather

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        scale = self.logit_scale()
        if not (self.gather and is_distributed() and get_world_size() > 1):
            return soft_clip_loss(image_emb, text_emb, scale, self.alpha, self.mode)
        image_all, text_all = gather_with_grad(image_emb), gather_with_grad(text_emb)  # (G*B, D)
        if self.local_loss:
            offset = get_rank() * image_emb.shape[0]
            return soft_clip_loss(image_emb, text_emb, scale, self.alpha, self.mode, image_all, text_all, offset)
        return soft_clip_loss(image_all, text_all, scale, self.alpha, self.mode)


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
