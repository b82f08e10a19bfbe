"""Evaluation metrics computed from score matrices (no Lightning, no data code)."""

from mmembed.metrics.retrieval import (
    DEFAULT_CHUNK_SIZE,
    hit_at_1,
    ndcg_at_k,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "hit_at_1",
    "ndcg_at_k",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
]
