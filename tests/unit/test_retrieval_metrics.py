"""Tests for mmembed.metrics.retrieval against slow loop references written here.

Tie rule under test: among equal scores the item with the lower gallery index ranks first.
"""

from __future__ import annotations

import math

import pytest
import torch

from mmembed.metrics import (
    hit_at_1,
    ndcg_at_k,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
)
from mmembed.metrics import retrieval as retrieval_module


def ranking(row: list[float]) -> list[int]:
    """Gallery indices best first: descending score, lower index first on ties (stable sort)."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def reference_reid(scores, query_labels, gallery_labels, ks=(1, 5, 10)) -> dict[str, float]:
    totals = {f"r{k}": 0.0 for k in ks} | {"map": 0.0, "minp": 0.0}
    q_labels, g_labels = query_labels.tolist(), gallery_labels.tolist()
    for i, row in enumerate(scores.double().tolist()):
        matches = [g_labels[j] == q_labels[i] for j in ranking(row)]
        n_rel = sum(matches)
        found, ap, last = 0, 0.0, 0
        for rank, is_match in enumerate(matches, start=1):
            if is_match:
                found += 1
                ap += found / rank
                last = rank
        first = matches.index(True) + 1
        for k in ks:
            totals[f"r{k}"] += float(first <= k)
        totals["map"] += ap / n_rel
        totals["minp"] += n_rel / last
    return {key: 100.0 * value / len(q_labels) for key, value in totals.items()}


def reference_graded(scores, relevance, k) -> tuple[float, float]:
    ndcg, hits = 0.0, 0.0
    rel_rows = relevance.double().tolist()
    for row, rel in zip(scores.double().tolist(), rel_rows):
        order = ranking(row)
        dcg = sum(rel[j] / math.log2(r + 2) for r, j in enumerate(order[:k]))
        ideal = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(rel, reverse=True)[:k]))
        ndcg += dcg / ideal
        hits += float(rel[order[0]] > 0)
    return 100.0 * ndcg / len(rel_rows), 100.0 * hits / len(rel_rows)


def assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def reid_problem(q=37, n=90, ids=15, seed=0, integer_scores=False):
    """Random labels where every query has several positives; optional integer scores (many ties)."""
    g = torch.Generator().manual_seed(seed)
    gallery_labels = torch.randint(0, ids, (n,), generator=g)
    gallery_labels[:ids] = torch.arange(ids)  # every id present at least once
    query_labels = torch.randint(0, ids, (q,), generator=g)
    if integer_scores:
        scores = torch.randint(0, 4, (q, n), generator=g).float()
    else:
        scores = torch.rand(q, n, generator=g)
    return scores, query_labels, gallery_labels


def test_toy_case_from_spec():
    # gallery [B, A, C, A], query A: positives at ranks 2 and 4.
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    got = retrieval_metrics(scores, torch.tensor([0]), torch.tensor([1, 0, 2, 0]))
    assert got == pytest.approx({"r1": 0.0, "r5": 100.0, "r10": 100.0, "map": 50.0, "minp": 50.0})


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 16, 512])
@pytest.mark.parametrize("integer_scores", [False, True])
@pytest.mark.parametrize("tiny_blocks", [False, True])
def test_matches_reference(chunk_size, integer_scores, tiny_blocks, monkeypatch):
    if tiny_blocks:  # rank 3 rows at a time inside each chunk; tied positives handled in groups of 3
        monkeypatch.setattr(retrieval_module, "_BLOCK_ELEMENTS", 3 * 90)
    scores, ql, gl = reid_problem(seed=chunk_size, integer_scores=integer_scores)
    ks = (1, 3, 5, 10)
    got = retrieval_metrics(scores, ql, gl, ks=ks, chunk_size=chunk_size)
    assert_close(got, reference_reid(scores, ql, gl, ks))


@pytest.mark.parametrize("threshold", [0, 2, None])
@pytest.mark.parametrize("integer_scores", [False, True])
def test_many_positives_use_sort_path(integer_scores, threshold, monkeypatch):
    # A few labels cover most of the gallery: queries with > _SORT_MIN_POSITIVES positives share
    # chunks with light queries (single-positive ids 2..), so both code paths run together.
    if threshold is not None:  # 0: every query takes the sort path; 2: most do
        monkeypatch.setattr(retrieval_module, "_SORT_MIN_POSITIVES", threshold)
    n = 116
    assert 40 > retrieval_module._SORT_MIN_POSITIVES
    monkeypatch.setattr(retrieval_module, "_BLOCK_ELEMENTS", 3 * n)  # count 3 rows at a time
    g = torch.Generator().manual_seed(3)
    heavy = [0] * (n - 60) + [1] * 40  # 56 and 40 positives
    gallery_labels = torch.tensor(heavy + list(range(2, 22)))[torch.randperm(n, generator=g)]
    query_labels = torch.randint(0, 22, (41,), generator=g)
    if integer_scores:
        scores = torch.randint(0, 6, (41, n), generator=g).float()
    else:
        scores = torch.rand(41, n, generator=g)
    for chunk_size in (5, 64):
        got = retrieval_metrics(scores, query_labels, gallery_labels, chunk_size=chunk_size)
        assert_close(got, reference_reid(scores, query_labels, gallery_labels))


def test_tie_rule_lower_index_first():
    one = torch.tensor([0])
    # Equal scores: the positive at index 0 wins, at index 1 it loses.
    assert retrieval_metrics(torch.tensor([[0.5, 0.5]]), one, torch.tensor([0, 1]), ks=(1,))["r1"] == 100.0
    got = retrieval_metrics(torch.tensor([[0.5, 0.5]]), one, torch.tensor([1, 0]), ks=(1,))
    assert got == pytest.approx({"r1": 0.0, "map": 50.0, "minp": 50.0})
    # Positive at index 2 tied with indices 1 and 3, below index 0: rank = 1 + 1 + 1 = 3.
    got = retrieval_metrics(torch.tensor([[1.0, 0.5, 0.5, 0.5]]), one, torch.tensor([1, 1, 0, 1]), ks=(2, 3))
    assert got == pytest.approx({"r2": 0.0, "r3": 100.0, "map": 100 / 3, "minp": 100 / 3})
    # Two tied positives behind a tied negative at a lower index: ranks 2 and 3.
    got = retrieval_metrics(torch.tensor([[0.2, 0.2, 0.2]]), one, torch.tensor([1, 0, 0]), ks=(1,))
    assert got == pytest.approx({"r1": 0.0, "map": 100 * (1 / 2 + 2 / 3) / 2, "minp": 100 * 2 / 3})


def test_invariant_to_joint_gallery_permutation_without_ties():
    scores, ql, gl = reid_problem(q=30, n=70, seed=5)
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(1))
    assert_close(retrieval_metrics(scores[:, perm], ql, gl[perm]), retrieval_metrics(scores, ql, gl))


def test_invariant_to_query_permutation_and_label_values():
    scores, ql, gl = reid_problem(q=30, n=70, seed=6, integer_scores=True)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(2))
    relabel = lambda labels: labels * -7919 + 3  # noqa: E731 - any injective map of the ids
    got = retrieval_metrics(scores[perm], relabel(ql[perm]), relabel(gl))
    assert_close(got, retrieval_metrics(scores, ql, gl))


def test_no_positive_error_names_queries():
    scores = torch.rand(10, 4)
    query_labels = torch.tensor([0, 9, 1, 9, 9, 9, 9, 9, 9, 0])
    with pytest.raises(ValueError) as info:
        retrieval_metrics(scores, query_labels, torch.tensor([0, 1, 0, 1]))
    message = str(info.value)
    assert "7 of 10 queries" in message and "1, 3, 4, 5, 6 and 2 more" in message
    assert "Drop these queries" in message


def test_input_errors():
    scores, ql, gl = reid_problem(q=6, n=8, ids=3)
    with pytest.raises(ValueError, match="NaN"):
        bad = scores.clone()
        bad[4, 2] = float("nan")
        retrieval_metrics(bad, ql, gl, chunk_size=4)
    with pytest.raises(ValueError, match="query_labels must have shape"):
        retrieval_metrics(scores, ql[:-1], gl)
    with pytest.raises(ValueError, match="gallery_labels must have shape"):
        retrieval_metrics(scores, ql, gl[:-1])
    with pytest.raises(ValueError, match=r"\(Q, N\)"):
        retrieval_metrics(scores[0], ql, gl)
    with pytest.raises(TypeError, match="integer"):
        retrieval_metrics(scores, ql.float(), gl)
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(scores, ql, gl, ks=(0,))
    with pytest.raises(ValueError, match="same D"):
        retrieval_metrics_from_embeddings(torch.rand(6, 3), torch.rand(8, 4), ql, gl)


def test_infinite_scores_are_ranked():
    scores = torch.tensor([[float("inf"), 0.0, float("-inf")], [float("-inf"), float("-inf"), 1.0]])
    ql, gl = torch.tensor([1, 0]), torch.tensor([0, 1, 0])
    assert_close(retrieval_metrics(scores, ql, gl), reference_reid(scores, ql, gl))


@pytest.mark.parametrize("chunk_size", [3, 100])
def test_from_embeddings_equals_scores_variant(chunk_size):
    g = torch.Generator().manual_seed(7)
    _, ql, gl = reid_problem(q=25, n=60, seed=7)
    for dtype, make in ((torch.float64, torch.randn), (torch.float32, None)):
        if make is None:  # small integers: exact products in float32, with many ties
            query, gallery = (torch.randint(-2, 3, (m, 8), generator=g).float() for m in (25, 60))
        else:
            query, gallery = (make(m, 8, generator=g, dtype=dtype) for m in (25, 60))
        want = retrieval_metrics(query @ gallery.T, ql, gl)
        assert_close(retrieval_metrics_from_embeddings(query, gallery, ql, gl, chunk_size=chunk_size), want)
        assert_close(want, reference_reid(query @ gallery.T, ql, gl))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores(dtype):
    scores, ql, gl = reid_problem(seed=8)
    low = scores.to(dtype)  # rounding creates ties, ranked by the same rule
    assert_close(retrieval_metrics(low, ql, gl, chunk_size=8), reference_reid(low.float(), ql, gl))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    scores, ql, gl = reid_problem(q=300, n=500, ids=40, seed=9, integer_scores=True)
    want = reference_reid(scores, ql, gl)
    assert_close(retrieval_metrics(scores.cuda(), ql.cuda(), gl.cuda(), chunk_size=64), want)
    assert_close(retrieval_metrics(scores.cuda().half(), ql.cuda(), gl, chunk_size=64), want)  # labels moved
    query, gallery = torch.randn(300, 16, dtype=torch.float64), torch.randn(500, 16, dtype=torch.float64)
    want = retrieval_metrics(query @ gallery.T, ql, gl)
    assert_close(retrieval_metrics_from_embeddings(query.cuda(), gallery.cuda(), ql, gl, chunk_size=70), want)
    scores, relevance = graded_problem(seed=4, integer_scores=True)
    want_ndcg, want_hit = reference_graded(scores, relevance, 5)
    assert ndcg_at_k(scores.cuda(), relevance.cuda(), 5, chunk_size=5) == pytest.approx(want_ndcg, abs=1e-9)
    assert hit_at_1(scores.cuda(), relevance.cuda()) == pytest.approx(want_hit, abs=1e-9)


def graded_problem(q=23, n=40, seed=0, integer_scores=False):
    g = torch.Generator().manual_seed(seed)
    relevance = torch.randint(0, 4, (q, n), generator=g).float() * (torch.rand(q, n, generator=g) < 0.3)
    relevance[:, 0] += 1  # every query has a relevant item
    if integer_scores:
        scores = torch.randint(0, 3, (q, n), generator=g).float()
    else:
        scores = torch.rand(q, n, generator=g)
    return scores, relevance


@pytest.mark.parametrize("k", [1, 3, 10, 100])
@pytest.mark.parametrize("integer_scores", [False, True])
def test_ndcg_and_hit_match_reference(k, integer_scores):
    scores, relevance = graded_problem(seed=k, integer_scores=integer_scores)
    want_ndcg, want_hit = reference_graded(scores, relevance, k)
    assert ndcg_at_k(scores, relevance, k, chunk_size=5) == pytest.approx(want_ndcg, abs=1e-9)
    assert hit_at_1(scores, relevance, chunk_size=5) == pytest.approx(want_hit, abs=1e-9)


def test_graded_tie_rule_and_errors():
    scores = torch.tensor([[0.3, 0.3, 0.1]])
    assert hit_at_1(scores, torch.tensor([[0.0, 1.0, 0.0]])) == 0.0  # index 0 wins the tie
    assert hit_at_1(scores, torch.tensor([[1.0, 0.0, 0.0]])) == 100.0
    assert ndcg_at_k(scores, torch.tensor([[0.0, 1.0, 0.0]]), 2) == pytest.approx(100 / math.log2(3))
    with pytest.raises(ValueError, match="1 of 2 queries"):
        ndcg_at_k(torch.rand(2, 3), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), 2)
    with pytest.raises(ValueError, match=">= 0"):
        hit_at_1(torch.rand(1, 3), torch.tensor([[-1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        ndcg_at_k(torch.rand(2, 3), torch.rand(2, 4), 2)
