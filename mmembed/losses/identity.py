"""Identity-aware losses over a text-by-image similarity matrix, shared by the person-ReID methods.

``sim`` is ``S_ij = cos(text_i, image_j)`` and pairs with equal ``pids`` are matches. IRRA trains
with :func:`sdm`; RDE uses it as an ablation and builds its own losses on the same helpers.

References:
    IRRA, Jiang and Ye, CVPR 2023, https://arxiv.org/abs/2303.12501 (SDM loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["prepare_similarity", "same_identity", "sdm"]


def prepare_similarity(sim: Tensor, pids: Tensor | None = None) -> Tensor:
    """Validate a square similarity matrix (and its pids) and upcast it to the compute dtype
    (float32, or float64 if given).

    Shapes:
        sim (B, B), pids (B,) -> (B, B).
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (B, B) matrix, got {tuple(sim.shape)}")
    if pids is not None and tuple(pids.shape) != (sim.shape[0],):
        raise ValueError(f"pids must have shape ({sim.shape[0]},), got {tuple(pids.shape)}")
    if not sim.is_floating_point():
        raise ValueError(f"sim must be a floating-point tensor, got {sim.dtype}")
    return sim.to(torch.float64 if sim.dtype == torch.float64 else torch.float32)


def same_identity(pids: Tensor) -> Tensor:
    """Positive mask ``P_ij = 1[pid_i = pid_j]``, diagonal included. Shapes: (B,) -> (B, B) bool."""
    return pids[:, None] == pids[None, :]


def sdm(sim: Tensor, pids: Tensor, scale: float | Tensor = 50.0, eps: float = 1e-8) -> Tensor:
    """Similarity Distribution Matching (IRRA) per pair, both directions summed.

    For each direction ``KL(p_i || q_i) = sum_j p_ij (log p_ij - log(q_ij + eps))``
    with ``p_i = softmax(scale * S_i.)`` and ``q_i = P_i / sum_j P_ij`` the
    uniform distribution over same-pid columns. The image side uses ``S^T``.

    Args:
        sim: Cosine similarities, ``S_ij = cos(text_i, image_j)``.
        pids: Identity of each pair; equal pids are matches.
        scale: Logit scale (50 in IRRA).
        eps: Added to ``q`` inside the log, as in IRRA.

    Returns:
        Per-pair losses; IRRA averages them.

    Shapes:
        sim ``(B, B)``, pids ``(B,)`` -> ``(B,)``.

    References:
        IRRA, CVPR 2023, https://arxiv.org/abs/2303.12501 (SDM loss).
    """
    s = prepare_similarity(sim, pids)
    pos = same_identity(pids).to(s.dtype)  # (B, B)
    log_q = torch.log(pos / pos.sum(dim=1, keepdim=True) + eps)  # (B, B)

    def kl(logits: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1)  # (B, B)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)  # (B, B) -> (B,)

    return kl(scale * s) + kl(scale * s.T)
