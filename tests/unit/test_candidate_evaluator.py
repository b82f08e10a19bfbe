"""CandidateListEvaluator (MMEB-style per-query candidate lists): hit@K, MRR, pessimistic ties."""

from __future__ import annotations

import math

import pytest
import torch

from mmembed.eval.base import Evaluator
from mmembed.eval.candidates import CandidateListEvaluator


def reference(query, candidates, positives, mask, ks, normalize=True):
    """Slow per-query loop: sort scores by hand, the first positive after tied negatives."""
    hits = {k: 0 for k in ks}
    rr_sum, n = 0.0, query.shape[0]
    for i in range(n):
        q = query[i].tolist()
        items = []  # (score, is_positive)
        for j in range(candidates.shape[1]):
            if mask is not None and not bool(mask[i, j]):
                continue
            c = candidates[i, j].tolist()
            dot = sum(a * b for a, b in zip(q, c))
            if normalize:
                dot /= max(math.sqrt(sum(a * a for a in q)), 1e-12) * max(math.sqrt(sum(b * b for b in c)), 1e-12)
            items.append((dot, bool(positives[i, j])))
        # descending score; on equal scores negatives (False) come first: the pessimistic rule
        items.sort(key=lambda t: (-t[0], t[1]))
        rank = next(r for r, (_, is_pos) in enumerate(items) if is_pos)
        for k in ks:
            hits[k] += rank < k
        rr_sum += 1.0 / (rank + 1)
    out = {f"hit{k}": 100.0 * hits[k] / n for k in ks}
    out["mrr"] = 100.0 * rr_sum / n
    return out


def random_case(seed, b=40, c=12, d=8, padded=True, quantize=False):
    g = torch.Generator().manual_seed(seed)
    q, cand = torch.randn(b, d, generator=g), torch.randn(b, c, d, generator=g)
    if quantize:  # few distinct directions, so exact score ties occur (dot products of small integers)
        q, cand = torch.randint(-1, 2, (b, d), generator=g).float(), torch.randint(-1, 2, (b, c, d), generator=g).float()
        q[q.abs().sum(1) == 0, 0] = 1.0
        cand[..., 0][cand.abs().sum(-1) == 0] = 1.0
    pos = torch.rand(b, c, generator=g) < 0.15
    if padded:
        lengths = torch.randint(2, c + 1, (b,), generator=g)
        mask = torch.arange(c)[None, :] < lengths[:, None]
    else:
        mask = torch.ones(b, c, dtype=torch.bool)
    # at least one valid positive per query, at a random valid position
    for i in range(b):
        if not (pos[i] & mask[i]).any():
            pos[i, int(torch.randint(int(mask[i].sum()), (1,), generator=g))] = True
    return q, cand, pos, (mask if padded else None)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_python_loop_reference(seed, padded, normalize):
    ks = (1, 3, 5)
    q, cand, pos, mask = random_case(seed, padded=padded)
    ev = CandidateListEvaluator(ks=ks, normalize=normalize)
    ev.update(q, cand, pos, torch.arange(q.shape[0]), mask)
    got, expected = ev.compute(), reference(q, cand, pos, mask, ks, normalize)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.parametrize("seed", [3, 4])
def test_matches_reference_with_exact_ties(seed):
    ks = (1, 2, 4)
    q, cand, pos, mask = random_case(seed, b=60, c=10, d=3, quantize=True)
    ev = CandidateListEvaluator(ks=ks, normalize=False)  # integer dot products: ties are exact
    ev.update(q, cand, pos, torch.arange(q.shape[0]), mask)
    got, expected = ev.compute(), reference(q, cand, pos, mask, ks, normalize=False)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_oracle_positives_first_gives_100():
    q = torch.eye(4)
    cand = torch.stack([torch.stack([q[i], -q[i], q[(i + 1) % 4]]) for i in range(4)])  # positive at 0
    pos = torch.zeros(4, 3, dtype=torch.bool)
    pos[:, 0] = True
    ev = CandidateListEvaluator(ks=(1, 2))
    ev.update(q, cand, pos, torch.arange(4))
    assert ev.compute() == {"hit1": 100.0, "hit2": 100.0, "mrr": 100.0}


def test_positive_tied_with_negative_counts_after_it():
    q = torch.tensor([[1.0, 0.0]])
    cand = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])  # cosine 1, 1, 0
    pos = torch.tensor([[True, False, False]])  # positive first in the list, tied with a negative
    ev = CandidateListEvaluator(ks=(1, 2))
    ev.update(q, cand, pos, torch.tensor([0]))
    assert ev.compute() == {"hit1": 0.0, "hit2": 100.0, "mrr": 50.0}
    assert ev.ranks()[1].tolist() == [1]


def test_constant_embeddings_do_not_score_100():
    # the V1 argmax trap: a collapsed model gives all-equal scores and argmax picks index 0
    q, cand = torch.ones(5, 4), torch.ones(5, 10, 4)
    pos = torch.zeros(5, 10, dtype=torch.bool)
    pos[:, 0] = True
    ev = CandidateListEvaluator()
    ev.update(q, cand, pos, torch.arange(5))
    assert ev.compute()["hit1"] == 0.0
    assert ev.compute()["mrr"] == pytest.approx(10.0)


def test_masked_padding_with_highest_score_is_ignored():
    q = torch.tensor([[1.0, 0.0]])
    cand = torch.tensor([[[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]])  # padding (index 2) scores highest
    pos = torch.tensor([[True, False, False]])
    ev = CandidateListEvaluator()
    ev.update(q, cand, pos, torch.tensor([0]), mask=torch.tensor([[True, True, False]]))
    assert ev.compute() == {"hit1": 100.0, "mrr": 100.0}
    ev.reset()
    ev.update(q, cand, pos, torch.tensor([0]))  # without the mask it would rank second
    assert ev.compute() == {"hit1": 0.0, "mrr": 50.0}


def test_masked_positive_does_not_count_and_all_masked_raises():
    q = torch.tensor([[1.0, 0.0]])
    cand = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    ev = CandidateListEvaluator()
    ev.update(q, cand, torch.tensor([[True, False, True]]), torch.tensor([0]), torch.tensor([[False, True, True]]))
    assert ev.compute()["hit1"] == 100.0  # the masked positive 0 is gone, positive 2 beats negative 1
    with pytest.raises(ValueError, match="unmasked positive"):
        ev.update(q, cand, torch.tensor([[True, False, False]]), torch.tensor([1]), torch.tensor([[False, True, True]]))


def test_several_batches_equal_one_batch():
    q, cand, pos, mask = random_case(5)
    idx = torch.arange(q.shape[0])
    one = CandidateListEvaluator(ks=(1, 5))
    one.update(q, cand, pos, idx, mask)
    many = CandidateListEvaluator(ks=(1, 5))
    perm = torch.randperm(q.shape[0], generator=torch.Generator().manual_seed(0))
    for part in perm.split(7):
        many.update(q[part], cand[part], pos[part], idx[part], mask[part])
    assert many.compute() == pytest.approx(one.compute())
    assert torch.equal(many.ranks()[1], one.ranks()[1])


def test_reset_forgets_and_empty_compute_raises():
    ev = CandidateListEvaluator()
    with pytest.raises(RuntimeError, match="nothing to score"):
        ev.compute()
    q, cand, pos, mask = random_case(6)
    ev.update(q, cand, pos, torch.arange(q.shape[0]), mask)
    ev.compute()
    ev.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        ev.compute()


@pytest.mark.parametrize("gather", [True, False])
def test_duplicated_indices_counted_once(gather):
    # no process group: gather_for_eval only sorts and de-duplicates by index (first row wins)
    assert not torch.distributed.is_available() or not torch.distributed.is_initialized()
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    cand = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    pos = torch.tensor([[True, False], [True, False]])  # sample 0 is a hit, sample 1 a miss
    ev = CandidateListEvaluator()
    ev.update(q, cand, pos, torch.tensor([0, 1]))
    ev.update(q[:1], cand[:1], pos[:1], torch.tensor([0]))  # padded repeat of sample 0
    ev.update(q[:1], cand[:1], pos[:1], torch.tensor([0]))
    idx, ranks = ev.ranks(gather)
    assert idx.tolist() == [0, 1] and ranks.tolist() == [0, 1]
    assert ev.compute(gather=gather) == {"hit1": 50.0, "mrr": 75.0}


def test_shape_errors_and_bad_ks():
    ev = CandidateListEvaluator()
    with pytest.raises(ValueError):
        ev.update(torch.randn(2, 4), torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.bool), torch.arange(2))
    with pytest.raises(ValueError):
        ev.update(torch.randn(2, 4), torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.arange(3))
    with pytest.raises(ValueError):
        CandidateListEvaluator(ks=(0,))


def test_is_an_evaluator():
    assert isinstance(CandidateListEvaluator(), Evaluator)
