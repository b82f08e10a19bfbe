"""RDE's per-sample losses over a text-by-image similarity matrix.

Pure functions of ``sim`` (``S_ij = cos(text_i, image_j)``, the reference
code's orientation) and ``pids``, returning one loss per pair ``i`` (text
anchor plus image anchor). :func:`reduce` weights and reduces them: TAL and
TRL are summed, InfoNCE and SDM take a label-weighted mean (the reference implementation).
Positives are ``P_ij = 1[pid_i = pid_j]`` (diagonal included), negatives
``N = 1 - P``; ``P`` is symmetric, so the image-side term is the text-side
term on ``S^T``.

Numerics: half inputs are upcast to float32 (float64 stays) and results come
back in that dtype; log-sum-exps use ``-inf`` masking, so ``S = 1`` at
``tau = 0.015`` is safe; a row without negatives (all pids equal) gives loss 0
and a zero, finite gradient.

Shapes:
    ``B`` batch size; ``sim`` is ``(B, B)``, ``pids`` ``(B,)``, outputs ``(B,)``.

References:
    RDE, Qin et al., CVPR 2024, https://arxiv.org/abs/2308.09911 (Eq. 5, TAL;
    the loss ablation with TRL, TRL-S and InfoNCE).
    IRRA, Jiang and Ye, CVPR 2023, https://arxiv.org/abs/2303.12501 (SDM loss, shared with IRRA
    from :mod:`mmembed.losses.identity` and re-exported here).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmembed.losses.identity import prepare_similarity as _prepare
from mmembed.losses.identity import same_identity as _positives
from mmembed.losses.identity import sdm

__all__ = ["info_nce_per_sample", "reduce", "sdm", "tal", "tal_row", "trl", "trl_row", "trl_s"]


def _check_tau(tau: float) -> None:
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")


def _alpha_positive_term(s: Tensor, pos: Tensor, tau: float) -> Tensor:
    """``sum_j alpha_ij S_ij`` with ``alpha = sg(softmax over positives of S / tau)``."""
    alpha = torch.softmax((s / tau).masked_fill(~pos, float("-inf")), dim=1).detach()  # (B, B)
    return (alpha * s).sum(dim=1)  # (B, B) -> (B,)


def _masked_negatives(values: Tensor, neg: Tensor, has_neg: Tensor) -> Tensor:
    """``values`` on negatives, ``-inf`` elsewhere; rows without negatives become 0 (finite, no gradient)."""
    masked = values.masked_fill(~neg, float("-inf"))
    return torch.where(has_neg[:, None], masked, torch.zeros_like(masked))


def _triplet_rows(s: Tensor, pos: Tensor, tau: float, margin: float, soft: bool) -> Tensor:
    """Row hinges: TAL's ``tau * logsumexp`` over negatives (``soft``) or TRL's hardest negative."""
    neg = ~pos
    has_neg = neg.any(dim=1)  # (B,)
    pos_term = _alpha_positive_term(s, pos, tau)  # (B,)
    if soft:
        neg_term = tau * torch.logsumexp(_masked_negatives(s / tau, neg, has_neg), dim=1)  # (B, B) -> (B,)
    else:
        neg_term = _masked_negatives(s, neg, has_neg).max(dim=1).values  # (B, B) -> (B,)
    hinge = (margin - pos_term + neg_term).clamp_min(0.0)
    return torch.where(has_neg, hinge, torch.zeros_like(hinge))


def _triplet(sim: Tensor, pids: Tensor, tau: float, margin: float, soft: bool, both: bool) -> Tensor:
    s = _prepare(sim, pids)
    _check_tau(tau)
    pos = _positives(pids)  # symmetric, so it also serves S^T
    rows = _triplet_rows(s, pos, tau, margin, soft)
    return rows + _triplet_rows(s.T, pos, tau, margin, soft) if both else rows


def tal_row(sim: Tensor, pids: Tensor, tau: float = 0.015, margin: float = 0.1) -> Tensor:
    """Text-side (row) term of the Triplet Alignment Loss.

    ``l_i(S) = [m - sum_j alpha_ij S_ij + tau * log sum_j N_ij exp(S_ij / tau)]_+``
    with ``alpha_i = sg(softmax_{j: P_ij} (S_ij / tau))``. The image-side term is
    ``tal_row(sim.T, pids)``. When the hinge is active, the gradient is the
    softmax over the negatives of ``S_i / tau`` (summing to 1) on negatives and
    ``-alpha_ij`` on positives; ``alpha`` is detached, as in the reference code.

    Args:
        sim: Cosine similarities, ``S_ij = cos(text_i, image_j)``.
        pids: Identity of each pair; equal pids are positives.
        tau: Temperature of the log-sum-exp and of ``alpha``.
        margin: Margin ``m``.

    Returns:
        Per-row losses in the compute dtype (float32 for half inputs); 0 for a
        row without negatives.

    Shapes:
        sim ``(B, B)``, pids ``(B,)`` -> ``(B,)``.

    References:
        RDE, CVPR 2024, https://arxiv.org/abs/2308.09911 (Eq. 5).
    """
    return _triplet(sim, pids, tau, margin, soft=True, both=False)


def tal(sim: Tensor, pids: Tensor, tau: float = 0.015, margin: float = 0.1) -> Tensor:
    """Triplet Alignment Loss per pair: ``L_TAL(i) = l_i(S) + l_i(S^T)``.

    See :func:`tal_row` for the term. TAL upper-bounds :func:`trl` for every
    ``tau > 0`` (``tau * logsumexp >= max``) and tends to it as ``tau -> 0``.

    Args:
        sim: Cosine similarities, ``S_ij = cos(text_i, image_j)``.
        pids: Identity of each pair; equal pids are positives.
        tau: Temperature (0.015 in RDE).
        margin: Margin ``m`` (0.1 in RDE).

    Returns:
        Per-pair losses (text anchor plus image anchor); RDE sums them.

    Shapes:
        sim ``(B, B)``, pids ``(B,)`` -> ``(B,)``.

    References:
        RDE, CVPR 2024, https://arxiv.org/abs/2308.09911 (Eq. 5).
    """
    return _triplet(sim, pids, tau, margin, soft=True, both=True)


def trl_row(sim: Tensor, pids: Tensor, margin: float = 0.1, tau: float = 0.015) -> Tensor:
    """Text-side (row) term of the hardest-negative triplet ranking loss (TRL).

    ``[m - sum_j alpha_ij S_ij + max_{j: N_ij} S_ij]_+``: the positive term is
    the same ``alpha``-weighted one as TAL (so ``tau`` only sets ``alpha``,
    as in the reference code); the hardest negative uses ``-inf`` masking, so
    negative similarities are handled correctly (the reference's
    ``(N * S).max()`` would return 0 when all negatives are below 0).

    Args:
        sim: Cosine similarities, ``S_ij = cos(text_i, image_j)``.
        pids: Identity of each pair; equal pids are positives.
        margin: Margin ``m``.
        tau: Temperature of the positive weights ``alpha``.

    Returns:
        Per-row losses; 0 for a row without negatives.

    Shapes:
        sim ``(B, B)``, pids ``(B,)`` -> ``(B,)``.

    References:
        RDE, CVPR 2024, https://arxiv.org/abs/2308.09911 (TRL, the
        hardest-negative loss that Eq. 5 relaxes; loss ablation).
    """
    return _triplet(sim, pids, tau, margin, soft=False, both=False)


def trl(sim: Tensor, pids: Tensor, margin: float = 0.1, tau: float = 0.015) -> Tensor:
    """Hardest-negative triplet ranking loss per pair: ``trl_row(S) + trl_row(S^T)``.

    Args:
        sim: Cosine similarities, ``S_ij = cos(text_i, image_j)``.
        pids: Identity of each pair; equal pids are positives.
        margin: Margin ``m``.
        tau: Temperature of the positive weights ``alpha`` (see :func:`trl_row`).

    Returns:
        Per-pair losses; RDE sums them.

    Shapes:
        sim ``(B, B)``, pids ``(B,)`` -> ``(B,)``.

    References:
        RDE, CVPR 2024, https://arxiv.org/abs/2308.09911 (TRL, the
        hardest-negative loss that Eq. 5 relaxes; loss ablation).
    """
    return _triplet(sim, pids, tau, margin, soft=False, both=True)


def trl_s(sim: Tensor, pids: Tensor, margin: float = 0.1) -> Tensor:
    """Sum-of-hinges triplet ranking loss (TRL-S, paper ablation) per pair.

    ``sum_{j: N_ij} [m - S_ii + S_ij]_+ + sum_{j: N_ij} [m - S_ii + S_ji]_+``.
    The positive similarity ``S_pos`` of pair ``i`` is its own diagonal entry
    ``S_ii``; other same-pid pairs are neither positives nor negatives here.

    Args:
        sim: Cosine similarities, ``S_ij = cos(text_i, image_j)``.
        pids: Identity of each pair; equal pids are excluded from the negatives.
        margin: Margin ``m``.

    Returns:
        Per-pair losses (0 for a row without negatives).

    Shapes:
        sim ``(B, B)``, pids ``(B,)`` -> ``(B,)``.

    References:
        RDE, CVPR 2024, https://arxiv.org/abs/2308.09911 (TRL-S, loss ablation).
    """
    s = _prepare(sim, pids)
    neg = ~_positives(pids)  # (B, B)
    diag = s.diagonal()[:, None]  # (B, B) -> (B, 1)
    zero = torch.zeros_like(s)
    text_side = torch.where(neg, (margin - diag + s).clamp_min(0.0), zero).sum(dim=1)  # (B, B) -> (B,)
    image_side = torch.where(neg, (margin - diag + s.T).clamp_min(0.0), zero).sum(dim=1)  # (B, B) -> (B,)
    return text_side + image_side


def info_nce_per_sample(sim: Tensor, scale: float | Tensor = 50.0) -> Tensor:
    """Symmetric InfoNCE (CLIP loss) per pair with diagonal targets.

    ``(-log softmax_j(scale * S_i.)_i - log softmax_j(scale * S_.i)_i) / 2``;
    identities are ignored (same-pid pairs off the diagonal count as negatives).

    Args:
        sim: Cosine similarities, ``S_ij = cos(text_i, image_j)``.
        scale: Logit scale ``1 / temperature`` (50 in RDE's ablation).

    Returns:
        Per-pair losses; RDE takes their label-weighted mean.

    Shapes:
        sim ``(B, B)`` -> ``(B,)``.

    References:
        RDE, CVPR 2024, https://arxiv.org/abs/2308.09911 (loss ablation);
        CLIP, https://arxiv.org/abs/2103.00020 (Fig. 3).
    """
    logits = scale * _prepare(sim)  # (B, B)
    text_side = -F.log_softmax(logits, dim=1).diagonal()  # (B, B) -> (B,)
    image_side = -F.log_softmax(logits, dim=0).diagonal()  # (B, B) -> (B,)
    return 0.5 * (text_side + image_side)


def reduce(
    per_sample: Tensor,
    weights: Tensor | None = None,
    mode: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """Weight and reduce per-sample losses.

    ``sum``: ``sum_i w_i l_i`` (TAL and TRL in RDE). ``mean``: the label-weighted
    mean ``sum_i w_i l_i / sum_i w_i`` (InfoNCE and SDM in RDE), which is 0 when
    every weight is 0. Without weights, ``w = 1``.

    Args:
        per_sample: One loss per sample.
        weights: Optional per-sample weights, e.g. CCD's consensus labels
            (bool or integer labels are cast to the loss dtype).
        mode: ``"sum"`` or ``"mean"``.

    Returns:
        Scalar loss.

    Shapes:
        per_sample ``(B,)``, weights ``(B,)`` -> ``()``.

    References:
        RDE, CVPR 2024, https://arxiv.org/abs/2308.09911 (overall objective,
        a sum over the consensus set).
    """
    if per_sample.dim() != 1:
        raise ValueError(f"per_sample must be 1-D (B,), got {tuple(per_sample.shape)}")
    if mode not in ("sum", "mean"):
        raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
    if weights is None:
        total = per_sample.sum()
        count = torch.tensor(float(per_sample.numel()), dtype=per_sample.dtype, device=per_sample.device)
    else:
        if weights.shape != per_sample.shape:
            raise ValueError(f"weights must have shape {tuple(per_sample.shape)}, got {tuple(weights.shape)}")
        w = weights.to(per_sample.dtype)
        total = (w * per_sample).sum()
        count = w.sum()
    if mode == "sum":
        return total
    return total / torch.where(count != 0, count, torch.ones_like(count))  # 0 / 1 when all weights vanish
