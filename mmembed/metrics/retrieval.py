"""Retrieval metrics: R@K, mAP and mINP (person-ReID semantics), nDCG@K and hit@1.

Tie rule (every function here): items are ranked by descending score, and among equal scores the item
with the LOWER gallery (column) index ranks first. This is the ranking a stable descending sort gives,
so results are exact and deterministic. The common ReID code (IRRA/RDE ``rank()``) calls a non-stable
``torch.argsort`` instead, so on exact ties its numbers may differ from ours.

``retrieval_metrics`` never sorts a whole row. A positive ``p`` of a query has rank
``#(score > s_p) + #(score == s_p and index < p) + 1``, so each positive costs two vectorised
compare-and-count passes over its row, and R@K only needs the best positive's rank. Queries are
processed in chunks of ``chunk_size`` rows, sorted by their number of positives so that each pass
touches only the rows that still have a positive left; on CPU each chunk is ranked in row blocks of
about 8 MB so those passes run from cache. Queries with more than ``_SORT_MIN_POSITIVES`` positives are
ranked by a stable sort of their row instead, which is cheaper for them. Extra memory is one chunk of
``chunk_size * N`` float32 scores plus a scratch block (8 MB on CPU, another chunk on CUDA), besides
the inputs; a chunk holding such many-positive queries also needs their sort indices.

Shapes: ``Q`` queries, ``N`` gallery items, ``D`` embedding width, ``K`` cut-off, ``P`` positives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE", "hit_at_1", "ndcg_at_k", "retrieval_metrics", "retrieval_metrics_from_embeddings"
]

DEFAULT_CHUNK_SIZE = 1024
"""Query rows scored and ranked at once. On 2 CPU cores, 1024 stayed within 1.7x of the bare matrix
product at 50,000 x 20,000 while 512 took 2.1x (``scripts/bench_retrieval.py``); on a GPU use ~4096+."""

_BLOCK_ELEMENTS = 1 << 21  # on CPU, a chunk is ranked in row blocks of about this many scores (8 MB)
_SORT_MIN_POSITIVES = 32  # a query with more positives than this is ranked by a stable row sort
_SHOWN = 5  # query indices named in error messages

_ChunkFn = Callable[[Tensor, Tensor], Tensor]  # (query rows (B,), out (B, N)) -> scores (B, N)


def _name_rows(rows: Tensor) -> str:
    rows = rows.sort().values
    shown = ", ".join(str(int(i)) for i in rows[:_SHOWN])
    rest = rows.numel() - _SHOWN
    return shown + (f" and {rest} more" if rest > 0 else "")


def _raise_no_positive(missing: Tensor, total: int, what: str) -> None:
    raise ValueError(
        f"{missing.numel()} of {total} queries have no {what} (query indices {_name_rows(missing)}); "
        "every query needs at least one relevant gallery item. Drop these queries (or add their "
        "positives to the gallery) before computing the metrics."
    )


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32/16/bfloat16 scores (order-preserving upcast); float64 otherwise."""
    if dtype.is_complex:
        raise TypeError(f"scores must be real-valued, got {dtype}")
    return torch.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64


def _check_nan(s: Tensor, rows: Tensor) -> None:
    """Raise on NaN scores. A row sum is NaN for NaN (or +inf with -inf), so the exact test is rare."""
    suspect = torch.isnan(s.sum(1)).nonzero().squeeze(1)
    if suspect.numel():
        bad = suspect[torch.isnan(s[suspect]).any(1)]
        if bad.numel():
            raise ValueError(
                f"scores contain NaN for query indices {_name_rows(rows[bad])} (at least {bad.numel()} "
                "queries); NaN cannot be ranked. Check the embeddings for NaN/inf before scoring."
            )


def _labels(labels: Tensor, n: int, name: str, device: torch.device) -> Tensor:
    if labels.dim() != 1 or labels.numel() != n:
        raise ValueError(f"{name} must have shape ({n},) to match the scores, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name} must be an integer (or bool) tensor of ids, got {labels.dtype}")
    return labels.to(device=device, dtype=torch.int64)


def _positive_index(query_labels: Tensor, gallery_labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Locate every query's positives without a (Q, N) mask.

    Returns:
        ``(n_rel, first, order)``: the positives of query ``q`` are the gallery items
        ``order[first[q] : first[q] + n_rel[q]]``, in ascending gallery index.

    Shapes:
        query_labels (Q,), gallery_labels (N,) -> n_rel (Q,), first (Q,), order (N,)
    """
    sorted_labels, order = torch.sort(gallery_labels, stable=True)
    ids, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = counts.cumsum(0) - counts
    slot = torch.searchsorted(ids, query_labels).clamp_(max=ids.numel() - 1)
    n_rel = torch.where(ids[slot] == query_labels, counts[slot], torch.zeros_like(slot))
    return n_rel, starts[slot], order


def _positive_ranks(s: Tensor, pos: Tensor, n_rel: Tensor, buf: Tensor) -> Tensor:
    """1-based ranks of each row's positives, ascending, padded with +inf.

    Args:
        s: scores of one chunk; rows sorted by ``n_rel`` descending.
        pos: gallery indices of the positives (entries ``j >= n_rel`` are any valid index).
        n_rel: number of positives per row, descending, all >= 1.
        buf: scratch rows; the counting passes run ``R`` rows at a time so that they stay in cache.

    Shapes:
        s (B, N), pos (B, P), n_rel (B,), buf (R, N) -> (B, P) float64
    """
    b, n = s.shape
    dev, step = s.device, buf.shape[0]
    t = s.gather(1, pos)  # (B, P) score of each positive (padding: some item's score)
    ranks = torch.full(pos.shape, math.inf, dtype=torch.float64, device=dev)
    heavy = int((n_rel > _SORT_MIN_POSITIVES).sum())
    if heavy:  # many positives: one stable sort of the row beats 2 passes per positive
        order = torch.sort(s[:heavy], dim=1, descending=True, stable=True).indices  # (h, N)
        place = torch.arange(1, n + 1, device=dev).expand(heavy, n)
        rank_of = torch.empty_like(order).scatter_(1, order, place)  # (h, N) rank of each item
        ranks[:heavy] = rank_of.gather(1, pos[:heavy]).double()  # (h, P)
    slots = min(pos.shape[1], _SORT_MIN_POSITIVES)
    # rows heavy .. ends[j] - 1 have a j-th positive (rows are sorted by n_rel)
    ends = (heavy + (n_rel[heavy:, None] > torch.arange(slots, device=dev)).sum(0)).tolist()
    above = torch.zeros((slots, b), dtype=buf.dtype, device=dev)  # (P, B) #(s > t)
    level = torch.zeros_like(above)  # (P, B) #(s >= t)
    for lo in range(heavy, b, step):
        for j, end in enumerate(ends):
            rows = slice(lo, min(lo + step, end))
            if rows.stop <= lo:
                break
            out, tj = buf[: rows.stop - lo], t[rows, j : j + 1]
            torch.sum(torch.gt(s[rows], tj, out=out), 1, out=above[j, rows])  # exact below 2**24
            torch.sum(torch.ge(s[rows], tj, out=out), 1, out=level[j, rows])
    ranks[heavy:, :slots] = above[:, heavy:].T.double() + 1
    tied = (level - above > 1).nonzero()  # (T, 2) (slot, row) pairs whose score is shared
    col = torch.arange(n, device=dev)
    for lo in range(0, tied.shape[0], step):  # lower-index ties rank first
        jj, rr = tied[lo : lo + step].unbind(1)
        before = (s[rr] == t[rr, jj, None]) & (col < pos[rr, jj, None])  # (T', N)
        ranks[rr, jj] += before.sum(1).double()
    padding = torch.arange(pos.shape[1], device=dev) >= n_rel[:, None]  # (B, P)
    return ranks.masked_fill_(padding, math.inf).sort(1).values


def _chunk_totals(ranks: Tensor, n_rel: Tensor, ks: Sequence[int]) -> Tensor:
    """Per-chunk sums of the R@K hits, AP and INP.

    Shapes:
        ranks (B, P) ascending, +inf padded; n_rel (B,) -> (len(ks) + 2,) float64
    """
    nr = n_rel.double()
    j = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=ranks.device)
    ap = (j / ranks).sum(1) / nr  # (B,) padding contributes j / inf = 0
    inp = nr / ranks.gather(1, (n_rel - 1)[:, None]).squeeze(1)  # (B,) n_rel / rank of the last
    hits = (ranks[:, :1] <= torch.tensor(ks, dtype=torch.float64, device=ranks.device)).sum(0)  # (len(ks),)
    return torch.cat([hits.double(), torch.stack([ap.sum(), inp.sum()])])


def _reid_metrics(
    fetch: _ChunkFn,
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    query_labels: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int],
    chunk_size: int,
) -> dict[str, float]:
    """Shared driver of both public ReID functions; ``fetch`` produces one chunk of scores."""
    q, n = shape
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be a non-empty sequence of integers >= 1, got {ks}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if q == 0 or n == 0:
        raise ValueError(f"need at least one query and one gallery item, got Q={q}, N={n}")
    n_rel, first, order = _positive_index(
        _labels(query_labels, q, "query_labels", device), _labels(gallery_labels, n, "gallery_labels", device)
    )
    missing = (n_rel == 0).nonzero().squeeze(1)
    if missing.numel():
        _raise_no_positive(missing, q, "gallery item with the same label")
    by_rel = torch.argsort(n_rel, descending=True, stable=True)  # (Q,) busiest queries first
    work = _work_dtype(dtype)
    chunk = torch.empty((min(chunk_size, q), n), dtype=work, device=device)
    block = max(1, _BLOCK_ELEMENTS // n) if device.type == "cpu" else chunk.shape[0]
    count_dtype = torch.float64 if n >= 2**24 else work  # float32 sums of 0/1 are exact below 2**24
    buf = torch.empty((min(block, chunk.shape[0]), n), dtype=count_dtype, device=device)
    totals = torch.zeros(len(ks) + 2, dtype=torch.float64, device=device)
    for start in range(0, q, chunk_size):
        rows = by_rel[start : start + chunk_size]  # (B,)
        s = fetch(rows, chunk[: rows.numel()])  # (B, N)
        _check_nan(s, rows)
        nr = n_rel[rows]
        slots = torch.arange(int(nr[0]), device=device)
        pos = order[(first[rows, None] + slots).clamp_(max=n - 1)]  # (B, P)
        totals += _chunk_totals(_positive_ranks(s, pos, nr, buf), nr, ks)
    values = (totals * (100.0 / q)).tolist()
    result = {f"r{k}": v for k, v in zip(ks, values)}
    result.update(map=values[-2], minp=values[-1])
    return result


def retrieval_metrics(
    scores: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Person-ReID retrieval metrics: R@K, mAP and mINP from a score matrix.

    A gallery item is relevant to a query when their labels are equal. R@K is the share of queries
    with at least one positive in the top K; AP = (1/n_rel) * sum_k match_k * (matches in top k) / k
    over the full ranking; INP = n_rel / (rank of the last positive). Ties: among equal scores the
    lower gallery index ranks first (a stable descending sort). Float16/bfloat16 scores are upcast
    to float32 chunk by chunk; CPU and CUDA tensors work.

    Args:
        scores: similarity of every query to every gallery item, higher is more similar.
        query_labels: integer identity of each query.
        gallery_labels: integer identity of each gallery item.
        ks: cut-offs K for R@K.
        chunk_size: query rows scored and ranked at once (memory ~ ``chunk_size * N`` floats).

    Returns:
        ``{"r1": ..., "r5": ..., "r10": ..., "map": ..., "minp": ...}`` (one ``r{k}`` per K), in
        percent (0-100).

    Raises:
        ValueError: on shape mismatches, NaN scores or queries without any positive.

    Shapes:
        scores (Q, N), query_labels (Q,), gallery_labels (N,)
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (Q, N), got {tuple(scores.shape)}")

    def fetch(rows: Tensor, out: Tensor) -> Tensor:
        if scores.dtype == out.dtype:
            return torch.index_select(scores, 0, rows, out=out)
        return out.copy_(scores.index_select(0, rows))

    return _reid_metrics(
        fetch, tuple(scores.shape), scores.dtype, scores.device, query_labels, gallery_labels, ks, chunk_size
    )


def retrieval_metrics_from_embeddings(
    query_emb: Tensor,
    gallery_emb: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """``retrieval_metrics(query_emb @ gallery_emb.T, ...)`` without building the (Q, N) matrix.

    Scores are computed chunk by chunk (in the embeddings' dtype) and ranked with the same code as
    :func:`retrieval_metrics`. Pass L2-normalised embeddings for cosine similarity.

    Args:
        query_emb: query embeddings.
        gallery_emb: gallery embeddings, same dtype and device as ``query_emb``.
        query_labels: integer identity of each query.
        gallery_labels: integer identity of each gallery item.
        ks: cut-offs K for R@K.
        chunk_size: query rows scored and ranked at once.

    Returns:
        The same dict as :func:`retrieval_metrics`, in percent.

    Raises:
        ValueError: on shape mismatches, NaN scores or queries without any positive.

    Shapes:
        query_emb (Q, D), gallery_emb (N, D), query_labels (Q,), gallery_labels (N,)
    """
    if query_emb.dim() != 2 or gallery_emb.dim() != 2 or query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(
            f"need query_emb (Q, D) and gallery_emb (N, D) with the same D, got "
            f"{tuple(query_emb.shape)} and {tuple(gallery_emb.shape)}"
        )
    if query_emb.dtype != gallery_emb.dtype or query_emb.device != gallery_emb.device:
        raise ValueError(
            f"query_emb ({query_emb.dtype}, {query_emb.device}) and gallery_emb "
            f"({gallery_emb.dtype}, {gallery_emb.device}) must share dtype and device"
        )
    gallery_t = gallery_emb.T  # (D, N)

    def fetch(rows: Tensor, out: Tensor) -> Tensor:
        q_rows = query_emb.index_select(0, rows)  # (B, D)
        if q_rows.dtype == out.dtype:
            return torch.matmul(q_rows, gallery_t, out=out)  # (B, D) @ (D, N) -> (B, N)
        return out.copy_(q_rows @ gallery_t)

    shape = (query_emb.shape[0], gallery_emb.shape[0])
    return _reid_metrics(
        fetch, shape, query_emb.dtype, query_emb.device, query_labels, gallery_labels, ks, chunk_size
    )


def _top_k(s: Tensor, k: int) -> Tensor:
    """Indices of the top ``k`` items per row in rank order, with the lower-index tie rule.

    Shapes:
        s (B, N) -> (B, K)
    """
    kth = torch.topk(s, k, dim=1).values[:, -1:]  # (B, 1) k-th largest value
    above = s > kth
    tied = s == kth
    room = k - above.sum(1, keepdim=True)  # (B, 1) places left for items tied with the k-th
    take = above | (tied & (tied.cumsum(1) <= room))  # exactly k per row
    idx = take.nonzero()[:, 1].view(-1, k)  # (B, K) ascending index
    order = torch.sort(s.gather(1, idx), dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)


def _graded_mean(
    scores: Tensor, relevance: Tensor, chunk_size: int, per_query: Callable[[Tensor, Tensor], Tensor]
) -> float:
    """Validate graded-relevance inputs, apply ``per_query`` per chunk and return the mean in %."""
    if scores.dim() != 2 or relevance.shape != scores.shape:
        raise ValueError(
            f"scores and relevance must both have shape (Q, N), got {tuple(scores.shape)} and "
            f"{tuple(relevance.shape)}"
        )
    q, n = scores.shape
    if q == 0 or n == 0:
        raise ValueError(f"need at least one query and one item, got Q={q}, N={n}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not bool((relevance >= 0).all()):
        raise ValueError("relevance must be >= 0 everywhere (graded gains; no NaN)")
    missing = (relevance.amax(1) <= 0).nonzero().squeeze(1)
    if missing.numel():
        _raise_no_positive(missing, q, "item with relevance > 0 (zero ideal DCG)")
    work = _work_dtype(scores.dtype)
    total = torch.zeros((), dtype=torch.float64, device=scores.device)
    for start in range(0, q, chunk_size):
        s = scores[start : start + chunk_size].to(work)  # (B, N)
        rows = torch.arange(start, start + s.shape[0], device=s.device)
        _check_nan(s, rows)
        rel = relevance[start : start + chunk_size].to(device=s.device, dtype=torch.float64)
        total += per_query(s, rel).sum()
    return float(total) * 100.0 / q


def ndcg_at_k(scores: Tensor, relevance: Tensor, k: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """Mean nDCG@K with linear gains, the pytrec_eval / MTEB convention.

    DCG@K = sum_{r=1..K} rel_(r) / log2(r + 1) over the ranking (ties: lower index first); the ideal
    DCG uses the relevance sorted in descending order. K larger than N is clipped to N.

    Args:
        scores: query-item similarity, higher is more similar.
        relevance: graded gain of every item for every query, >= 0.
        k: cut-off.
        chunk_size: query rows ranked at once.

    Returns:
        nDCG@K averaged over queries, in percent.

    Raises:
        ValueError: on shape mismatches, NaN scores, negative gains or queries whose ideal DCG is 0.

    Shapes:
        scores (Q, N), relevance (Q, N)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    kk = min(k, scores.shape[-1]) if scores.dim() == 2 else k
    disc = 1.0 / torch.log2(torch.arange(2, kk + 2, dtype=torch.float64, device=scores.device))  # (K,)

    def per_query(s: Tensor, rel: Tensor) -> Tensor:
        dcg = (rel.gather(1, _top_k(s, kk)) * disc).sum(1)  # (B,)
        ideal = (torch.topk(rel, kk, dim=1).values * disc).sum(1)  # (B,)
        return dcg / ideal

    return _graded_mean(scores, relevance, chunk_size, per_query)


def hit_at_1(scores: Tensor, relevance: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """Share of queries whose top-ranked item (ties: lower index first) has relevance > 0.

    Args:
        scores: query-item similarity, higher is more similar.
        relevance: graded gain (or 0/1 mask) of every item for every query, >= 0.
        chunk_size: query rows ranked at once.

    Returns:
        Hit@1 in percent.

    Raises:
        ValueError: on shape mismatches, NaN scores, negative gains or queries with no relevant item.

    Shapes:
        scores (Q, N), relevance (Q, N)
    """

    def per_query(s: Tensor, rel: Tensor) -> Tensor:
        return (rel.gather(1, _top_k(s, 1)) > 0).double().squeeze(1)  # (B,)

    return _graded_mean(scores, relevance, chunk_size, per_query)
