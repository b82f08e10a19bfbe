"""Lightning-free retrieval evaluation: accumulate embeddings, gather, score.

Validation and test in :class:`mmembed.lit.EmbeddingModule` use the same
:class:`RetrievalEvaluator`; :func:`evaluate_retrieval` runs it on any
:class:`~mmembed.eval.protocol.EmbeddingModel` with two plain DataLoaders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmembed.distributed import dedupe_by_index, gather_for_eval
from mmembed.eval.protocol import EmbeddingModel
from mmembed.metrics.retrieval import DEFAULT_CHUNK_SIZE, retrieval_metrics_from_embeddings


class RetrievalEvaluator:
    """Collects query and gallery embeddings and computes retrieval metrics.

    Under torch.distributed each rank adds its shard; :meth:`compute` gathers
    ``(index, embedding, label)`` from all ranks and de-duplicates by index
    (distributed samplers pad with repeats).

    Args:
        ks: Cut-offs for R@K.
        chunk_size: Query chunk size for scoring (memory is chunk x gallery).
        normalize: L2-normalise embeddings before scoring (cosine similarity).
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = DEFAULT_CHUNK_SIZE, normalize: bool = True) -> None:
        self.ks, self.chunk_size, self.normalize = tuple(ks), chunk_size, normalize
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._parts: dict[str, list[tuple[Tensor, ...]]] = {"query": [], "gallery": []}
        self.sizes: tuple[int, int] = (0, 0)  # (queries, gallery) of the last forward compute()
        self._collected: dict[tuple[str, bool], tuple[Tensor, Tensor, Tensor]] = {}  # gathered once per side

    def update(self, side: str, embeddings: Tensor, labels: Tensor, indices: Tensor) -> None:
        """Add a batch to ``"query"`` or ``"gallery"`` (the :class:`~mmembed.eval.base.Evaluator` call).

        Shapes:
            embeddings: (B, D); labels: (B,); indices: (B,).
        """
        if side not in self._parts:
            raise ValueError(f"side must be 'query' or 'gallery', got {side!r}")
        self._collected.clear()
        # kept on the model's device: NCCL gathers need device tensors
        self._parts[side].append((indices.detach().long(), embeddings.detach().float(), labels.detach()))

    add = update  # the name used before the Evaluator interface

    def collected(self, side: str, gather: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """All ``(indices, embeddings, labels)`` of a side, gathered and sorted by index.

        The result is kept until the next :meth:`add` or :meth:`reset`, so metrics and the
        ranked-results picture share one gather.
        """
        key = (side, gather)
        if key in self._collected:
            return self._collected[key]
        parts = self._parts[side]
        if not parts:
            raise RuntimeError(f"no {side} embeddings were added")
        idx, emb, lab = (torch.cat(t) for t in zip(*parts, strict=True))
        idx, emb, lab = gather_for_eval(idx, emb, lab) if gather else dedupe_by_index(idx, emb, lab)
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        self._collected[key] = (idx, emb, lab)
        return idx, emb, lab

    def compute(self, gather: bool = True, drop_queries_without_positives: bool = False,
                reverse: bool = False) -> dict[str, float]:
        """Metrics over everything added (``r{k}``, ``map``, ``minp``, in percent).

        Args:
            gather: Gather across ranks when torch.distributed is initialised.
            drop_queries_without_positives: Skip queries whose identity is absent
                from the gallery instead of raising. Only meant for partial runs
                (sanity checks, ``fast_dev_run``, ``limit_*_batches``).
            reverse: Rank the query set for every gallery item instead (image -> text when the
                queries are captions). R@K then counts a hit when *any* item with the same label
                is in the top K: with one label per image, the CLIP_benchmark convention
                ("any of the image's captions"); with identity or class labels, any caption of
                the identity or class.
        """
        _, q, ql = self.collected("query", gather)
        _, g, gl = self.collected("gallery", gather)
        if reverse:
            q, ql, g, gl = g, gl, q, ql
        if drop_queries_without_positives:
            keep = torch.isin(ql, gl)
            if not keep.any():
                return {}
            q, ql = q[keep], ql[keep]
        if not reverse:
            self.sizes = (int(q.shape[0]), int(g.shape[0]))
        return retrieval_metrics_from_embeddings(q, g, ql, gl, ks=self.ks, chunk_size=self.chunk_size)

    def top_k(self, num_queries: int, k: int = 10, gather: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Ranked gallery positions for ``num_queries`` queries spread evenly over the query set.

        Queries are usually grouped by identity, so evenly spaced ones show different people.
        Ties rank the lower gallery index first.

        Returns:
            ``(query_indices, ranked_gallery_indices, correct)``.

        Shapes:
            (Qs,), (Qs, K), (Qs, K) with Qs = min(num_queries, Q).
        """
        qi, q, ql = self.collected("query", gather)
        gi, g, gl = self.collected("gallery", gather)
        pick = torch.linspace(0, q.shape[0] - 1, min(num_queries, q.shape[0]), device=q.device).round().long()
        q, ql, qi = q[pick], ql[pick], qi[pick]
        scores = q @ g.T  # (Qs, N)
        k = min(k, g.shape[0])
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # (Qs, K)
        return qi, gi[order], gl[order] == ql[:, None]


@torch.no_grad()
def evaluate_retrieval(
    model: EmbeddingModel,
    query_loader: Iterable[dict[str, Any]],
    gallery_loader: Iterable[dict[str, Any]],
    device: str | torch.device | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    both_directions: bool = False,
) -> dict[str, float]:
    """Encode queries and gallery with ``model`` and compute retrieval metrics.

    Args:
        model: Any object with ``encode_query_batch`` and ``encode_gallery_batch``.
        query_loader: Batches with ``label`` and ``index`` plus the query inputs.
        gallery_loader: Batches with ``label`` and ``index`` plus the gallery inputs.
        device: Where to run the model; tensors in each batch are moved there.
        ks: Cut-offs for R@K.
        chunk_size: Query chunk size for scoring.
        both_directions: Also rank the queries for every gallery item (image -> text),
            returned with an ``i2t_`` prefix (see :meth:`RetrievalEvaluator.compute`).

    Returns:
        ``{"r1", "r5", "r10", "map", "minp"}`` in percent (plus ``i2t_r1``, ... when asked).
    """
    evaluator = RetrievalEvaluator(ks, chunk_size)
    for side, loader, encode in (
        ("query", query_loader, model.encode_query_batch),
        ("gallery", gallery_loader, model.encode_gallery_batch),
    ):
        for batch in loader:
            if device is not None:
                batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            evaluator.update(side, encode(batch), batch["label"], batch["index"])
    out = evaluator.compute(gather=False)
    if both_directions:
        out.update({f"i2t_{k}": v for k, v in evaluator.compute(gather=False, reverse=True).items()})
    return out
