"""Composed image retrieval metrics: CIRR recall (reference removed), CIRR subset recall and
CIRCO mAP@K, on score matrices.

Every function takes ``scores`` (Q, G), one row per composed query over the whole gallery, and
returns percentages keyed like ``r1`` or ``map5``. Ties rank the lower gallery index first (a
stable descending sort), as in :mod:`mmembed.metrics.retrieval`, so results are exact and
deterministic. Rows are processed in chunks; nothing sorts a whole row.

References:
    Liu et al., "Image Retrieval on Real-life Images with Pre-trained Vision-and-Language Models"
    (CIRR), ICCV 2021; Baldrati et al., "Zero-Shot Composed Image Retrieval with Textual
    Inversion" (CIRCO), ICCV 2023.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmembed.metrics.retrieval import DEFAULT_CHUNK_SIZE, _top_k

__all__ = ["circo_map", "cirr_recall", "cirr_subset_recall", "recall_at_k"]


def _check_scores(scores: Tensor, n_queries: int, name: str) -> Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores must be (queries, gallery), got shape {tuple(scores.shape)}")
    if n_queries != scores.shape[0]:
        raise ValueError(f"{name} has {n_queries} entries for {scores.shape[0]} score rows")
    if torch.isnan(scores).any():
        rows = torch.isnan(scores).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"scores contain NaN (rows {rows}); check the embeddings")
    return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores


def _index(values: Tensor | Sequence[int], n_gallery: int, name: str, device: torch.device) -> Tensor:
    out = torch.as_tensor(values, device=device).long().flatten()
    bad = (out < 0) | (out >= n_gallery)
    if bad.any():
        raise ValueError(f"{name} must be gallery positions in [0, {n_gallery}); rows {bad.nonzero().flatten()[:5].tolist()} are not")
    return out


def _ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    return ks


def _rank_among(s: Tensor, target: Tensor, candidates: Tensor, keep: Tensor) -> Tensor:
    """0-based rank of each row's target among the kept candidates (ties: lower index first).

    Shapes:
        s (B, N), target (B,), candidates (B, C) gallery positions, keep (B, C) bool -> (B,).
    """
    t = s.gather(1, target[:, None])  # (B, 1)
    c = s.gather(1, candidates)  # (B, C)
    ahead = (c > t) | ((c == t) & (candidates < target[:, None]))
    return (ahead & keep & (candidates != target[:, None])).sum(1)


def cirr_recall(
    scores: Tensor,
    target_index: Tensor | Sequence[int],
    reference_index: Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10, 50),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """CIRR Recall@K: the reference image is removed from each ranking, then the share of queries
    whose target is in the top K.

    Args:
        scores: Query-gallery similarities.
        target_index: Gallery position of each query's target.
        reference_index: Gallery position of each query's reference image (removed).
        ks: Cut-offs.
        chunk_size: Rows per chunk.

    Returns:
        ``{"r1": ..., "r5": ...}`` in percent.

    Raises:
        ValueError: On shape mismatches, NaN scores, positions outside the gallery, or a target
            equal to its reference.

    Shapes:
        scores (Q, G), target_index (Q,), reference_index (Q,).
    """
    scores = _check_scores(scores, len(target_index), "target_index")
    g = scores.shape[1]
    target = _index(target_index, g, "target_index", scores.device)
    reference = _index(reference_index, g, "reference_index", scores.device)
    if (target == reference).any():
        rows = (target == reference).nonzero().flatten()[:5].tolist()
        raise ValueError(f"queries {rows} have their reference as target; CIRR removes the reference from the ranking")
    return _recall(scores, target, reference, _ks(ks), chunk_size)


def recall_at_k(
    scores: Tensor,
    target_index: Tensor | Sequence[int],
    ks: Sequence[int] = (10, 50),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Recall@K with one target per query and nothing removed from the ranking (FashionIQ, whose
    reference stays in the gallery).

    Returns:
        ``{"r10": ..., "r50": ...}`` in percent.

    Shapes:
        scores (Q, G), target_index (Q,).
    """
    scores = _check_scores(scores, len(target_index), "target_index")
    target = _index(target_index, scores.shape[1], "target_index", scores.device)
    return _recall(scores, target, None, _ks(ks), chunk_size)


def _recall(scores: Tensor, target: Tensor, reference: Tensor | None, ks: tuple[int, ...],
            chunk_size: int) -> dict[str, float]:
    """Share of rows whose target ranks in the top K (ties: lower index first), with each row's
    ``reference`` left out of the ranking when given."""
    q, g = scores.shape
    hits = torch.zeros(len(ks), dtype=torch.float64)
    everything = torch.arange(g, device=scores.device)
    for start in range(0, q, chunk_size):
        s = scores[start:start + chunk_size]
        rows = slice(start, start + s.shape[0])
        t = s.gather(1, target[rows, None])  # (b, 1)
        ahead = (s > t) | ((s == t) & (everything[None, :] < target[rows, None]))  # (b, G)
        rank = ahead.sum(1)
        if reference is not None:  # the reference is ahead of the target at most once
            rank = rank - ahead.gather(1, reference[rows, None]).squeeze(1).long()
        hits += torch.stack([(rank < k).sum() for k in ks]).double().cpu()
    return {f"r{k}": float(100.0 * h / q) for k, h in zip(ks, hits, strict=True)}


def cirr_subset_recall(
    scores: Tensor,
    target_index: Tensor | Sequence[int],
    reference_index: Tensor | Sequence[int],
    subset_indices: Tensor | Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 2, 3),
) -> dict[str, float]:
    """CIRR Recall_subset@K: rank only the query's image set (``img_set.members``) without the
    reference, in the order of the full ranking; the share of queries whose target is in the top K.

    Args:
        scores: Query-gallery similarities.
        target_index: Gallery position of each query's target (must be in its subset).
        reference_index: Gallery position of each query's reference (dropped from its subset).
        subset_indices: Gallery positions of each query's image set (CIRR: 6, reference included).
        ks: Cut-offs.

    Returns:
        ``{"r1": ..., "r2": ..., "r3": ...}`` in percent.

    Raises:
        ValueError: On shape mismatches, NaN scores, positions outside the gallery, or a target
            outside its subset.

    Shapes:
        scores (Q, G), target_index (Q,), reference_index (Q,), subset_indices (Q, S).
    """
    scores = _check_scores(scores, len(target_index), "target_index")
    q, g = scores.shape
    target = _index(target_index, g, "target_index", scores.device)
    reference = _index(reference_index, g, "reference_index", scores.device)
    subset = torch.as_tensor(subset_indices, device=scores.device).long()
    if subset.dim() != 2 or subset.shape[0] != q:
        raise ValueError(f"subset_indices must be (queries, members), got shape {tuple(subset.shape)}")
    _index(subset, g, "subset_indices", scores.device)
    missing = ~(subset == target[:, None]).any(1)
    if missing.any():
        raise ValueError(f"queries {missing.nonzero().flatten()[:5].tolist()} have a target outside their subset")
    keep = subset != reference[:, None]
    # a member listed twice would count twice: keep its first occurrence only
    first = torch.ones_like(keep)
    for j in range(1, subset.shape[1]):
        first[:, j] = ~(subset[:, :j] == subset[:, j:j + 1]).any(1)
    rank = _rank_among(scores, target, subset, keep & first)
    ks = _ks(ks)
    return {f"r{k}": float(100.0 * (rank < k).double().mean()) for k in ks}


def circo_map(
    scores: Tensor,
    gt_indices: Tensor | Sequence[Sequence[int]],
    ks: Sequence[int] = (5, 10, 25, 50),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """CIRCO mAP@K: ``AP@K = (1 / min(K, |G|)) * sum_{k <= K} P@k * rel_k``, averaged over queries.

    Args:
        scores: Query-gallery similarities (CIRCO's released code keeps the reference in the gallery).
        gt_indices: Each query's ground-truth gallery positions: lists, or a (Q, M) tensor padded
            with -1. Repeats count once.
        ks: Cut-offs.
        chunk_size: Rows per chunk.

    Returns:
        ``{"map5": ..., "map10": ...}`` in percent.

    Raises:
        ValueError: On shape mismatches, NaN scores, positions outside the gallery, or a query
            without ground truth.

    Shapes:
        scores (Q, G), gt_indices (Q, M) or Q lists.
    """
    if isinstance(gt_indices, Tensor):
        gt = gt_indices.to(scores.device).long()
    else:
        width = max((len(x) for x in gt_indices), default=0)
        gt = torch.full((len(gt_indices), max(1, width)), -1, dtype=torch.long)
        for i, row in enumerate(gt_indices):
            gt[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        gt = gt.to(scores.device)
    scores = _check_scores(scores, gt.shape[0], "gt_indices")
    q, g = scores.shape
    if gt.dim() != 2:
        raise ValueError(f"gt_indices must be (queries, M) padded with -1, got shape {tuple(gt.shape)}")
    if ((gt < -1) | (gt >= g)).any():
        raise ValueError(f"gt_indices must be gallery positions in [0, {g}) or -1 padding")
    sorted_gt = gt.sort(1).values
    unique = (sorted_gt >= 0) & torch.cat([torch.ones_like(sorted_gt[:, :1], dtype=torch.bool),
                                           sorted_gt[:, 1:] != sorted_gt[:, :-1]], 1)
    n_rel = unique.sum(1)  # (Q,) distinct ground truths
    if (n_rel == 0).any():
        raise ValueError(f"queries {(n_rel == 0).nonzero().flatten()[:5].tolist()} have no ground truth")
    ks = _ks(ks)
    k_max = min(max(ks), g)
    total = torch.zeros(len(ks), dtype=torch.float64)
    positions = torch.arange(1, k_max + 1, device=scores.device, dtype=torch.float64)
    for start in range(0, q, chunk_size):
        s = scores[start:start + chunk_size]
        b = s.shape[0]
        top = _top_k(s, k_max)  # (b, K) ranked gallery positions
        rel = (top[:, :, None] == gt[start:start + b, None, :]).any(-1).double()  # (b, K) padding never matches
        precision_hits = rel.cumsum(1) / positions * rel  # P@k * rel_k
        for i, k in enumerate(ks):
            norm = n_rel[start:start + b].double().clamp(max=float(k))  # min(K, |G|)
            total[i] += float((precision_hits[:, : min(k, k_max)].sum(1) / norm).sum())
    return {f"map{k}": float(100.0 * t / q) for k, t in zip(ks, total, strict=True)}
