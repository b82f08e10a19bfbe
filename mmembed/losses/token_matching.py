"""Token-level alignment by relaxed bipartite matching (LightCLIP's L_tok).

For a matched image-text pair, word tokens are assigned to patch tokens by a maximum-weight
matching on their cosine similarities: each word may take up to ``r`` patches and each patch
serves at most one word (``relaxed``); ``strict`` is ``r = 1`` and ``argmax`` lets every word
take its best patch, with patches reusable (FILIP-style). The assignment is a constant
target: each word's softmax over the patches of its own image (temperature ``tau``) is pulled
towards the uniform distribution over its matched patches. Gradients reach the model only
through the similarities.

References:
    Nie et al., "LightCLIP", 2023, https://arxiv.org/abs/2312.00674 (token-level alignment);
    the form follows the method specification's reconstruction (its choices are options).
    Yao et al., "FILIP", ICLR 2022 (token-wise max similarity, the ``argmax`` ablation).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["MatchMode", "match_tokens", "token_matching_loss"]

MatchMode = Literal["relaxed", "strict", "argmax"]


def match_tokens(sim: Tensor | np.ndarray, r: int | None = None, mode: MatchMode = "relaxed") -> np.ndarray:
    """Assign words to patches, maximising the total similarity.

    ``relaxed``: every word row is replicated ``r`` times and a maximum-weight assignment is
    solved (``scipy.optimize.linear_sum_assignment``), so a word gets up to ``r`` patches and
    a patch at most one word; ``min(r * M, P)`` pairs are matched. ``strict`` is ``r = 1``.
    ``argmax``: each word takes its most similar patch (patches may repeat).

    Args:
        sim: Word x patch similarities (detached; computed in float64 on CPU).
        r: Patches per word for ``relaxed``; None: ``max(1, P // M)``.
        mode: ``relaxed``, ``strict`` or ``argmax``.

    Returns:
        Boolean assignment matrix, True where word ``w`` is matched to patch ``p``.

    Shapes:
        sim: (M, P) -> (M, P).
    """
    s = sim.detach().to("cpu", torch.float64).numpy() if isinstance(sim, Tensor) else np.asarray(sim, np.float64)
    m, p = s.shape
    out = np.zeros((m, p), dtype=bool)
    if m == 0 or p == 0:
        return out
    if mode == "argmax":
        out[np.arange(m), s.argmax(1)] = True
        return out
    if mode not in ("relaxed", "strict"):
        raise ValueError(f"mode must be 'relaxed', 'strict' or 'argmax', got {mode!r}")
    from scipy.optimize import linear_sum_assignment

    r = 1 if mode == "strict" else (max(1, p // m) if r is None else r)
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    rows, cols = linear_sum_assignment(np.repeat(s, r, axis=0), maximize=True)  # row k is word k // r
    out[rows // r, cols] = True
    return out


def token_matching_loss(
    word_tokens: Tensor,
    patch_tokens: Tensor,
    word_mask: Tensor,
    tau: float = 0.1,
    r: int | None = None,
    mode: MatchMode = "relaxed",
    return_matched_cosine: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """LightCLIP's token-level loss over the matched pairs of a batch.

    Per pair ``i``: ``S = W_i V_i^T`` (cosines of normalised tokens), ``T`` = the assignment of
    :func:`match_tokens`, rows spread uniformly over each word's patches, and
    ``L(i) = -(1/M_i) sum_w sum_p T_wp log softmax_p(S_wp / tau)`` over the ``M_i`` words that
    got a patch. The batch loss is the mean over pairs with at least one matched word.

    Args:
        word_tokens: Projected text tokens (normalised here).
        patch_tokens: Projected image patch tokens, without CLS (normalised here).
        word_mask: True at real word positions (not SOT, EOT, padding or a mask token).
        tau: Softmax temperature over patches.
        r: Patches per word (``relaxed``); None: ``max(1, P // M_i)``.
        mode: ``relaxed``, ``strict`` or ``argmax`` (see :func:`match_tokens`).
        return_matched_cosine: Also return the mean cosine of the matched (word, patch) pairs
            (detached; NaN when nothing is matched), the statistic to watch for alignment.

    Returns:
        Scalar loss (0 with no gradient path when no pair has a word), and the mean matched
        cosine if asked.

    Shapes:
        word_tokens: (B, L, D); patch_tokens: (B, P, D); word_mask: (B, L) -> ().
    """
    words = torch.nn.functional.normalize(word_tokens.float(), dim=-1)
    patches = torch.nn.functional.normalize(patch_tokens.float(), dim=-1)
    sim = torch.einsum("bld,bpd->blp", words, patches)  # (B, L, P), every pair at once
    # the assignments are constants: solve them on a detached CPU copy, one small problem per pair
    host, mask_host = sim.detach().to("cpu", torch.float64).numpy(), word_mask.cpu().numpy()
    assign = np.zeros(host.shape, dtype=bool)  # (B, L, P)
    for i in range(host.shape[0]):
        rows = np.flatnonzero(mask_host[i])
        if rows.size:
            assign[i, rows] = match_tokens(host[i, rows], r, mode)
    assign_t = torch.from_numpy(assign).to(sim.device)
    matched = assign_t.any(-1)  # (B, L): words with at least one patch
    per_pair = matched.sum(-1)  # (B,)
    cosine = sim.detach()[assign_t].mean() if bool(assign_t.any()) else sim.new_tensor(float("nan"))
    if not bool((per_pair > 0).any()):
        zero = word_tokens.sum() * 0.0
        return (zero, cosine) if return_matched_cosine else zero
    targets = assign_t.float() / assign_t.sum(-1, keepdim=True).clamp_min(1)  # rows spread over the patches
    ce = -(targets * torch.log_softmax(sim / tau, dim=-1)).sum(-1)  # (B, L), 0 on unmatched rows
    per_pair_loss = ce.sum(-1) / per_pair.clamp_min(1)  # mean over the pair's matched words
    loss = per_pair_loss[per_pair > 0].mean()
    return (loss, cosine) if return_matched_cosine else loss
