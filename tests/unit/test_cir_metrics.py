"""CIR metrics against hand-made rankings and slow loop references (ties included)."""

from __future__ import annotations

import pytest
import torch

from mmembed.metrics.cir import circo_map, cirr_recall, cirr_subset_recall, recall_at_k


def ranking(row: torch.Tensor) -> list[int]:
    """Gallery positions by descending score, lower position first on ties."""
    return sorted(range(len(row)), key=lambda j: (-float(row[j]), j))


def test_cirr_recall_removes_the_reference():
    # gallery 0..4; the reference (0) scores highest, the target (3) second
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.8, 0.3]])
    assert cirr_recall(scores, [3], [0], ks=(1, 2)) == {"r1": 100.0, "r2": 100.0}
    # with another image as reference the target stays second
    assert cirr_recall(scores, [3], [1], ks=(1, 2)) == {"r1": 0.0, "r2": 100.0}
    with pytest.raises(ValueError, match="reference as target"):
        cirr_recall(scores, [0], [0])


def test_cirr_subset_recall_uses_members_without_the_reference():
    scores = torch.tensor([[0.9, 0.1, 0.7, 0.8, 0.3, 0.95]])
    members = [[0, 2, 3, 4, 1, 1]]  # the reference (0) is a member; 1 is listed twice; 5 is not a member
    # without the reference and the non-member 5: 3 (0.8) > 2 (0.7) > 4 > 1
    assert cirr_subset_recall(scores, [2], [0], members) == {"r1": 0.0, "r2": 100.0, "r3": 100.0}
    assert cirr_subset_recall(scores, [4], [0], members, ks=(2, 3)) == {"r2": 0.0, "r3": 100.0}
    with pytest.raises(ValueError, match="outside their subset"):
        cirr_subset_recall(scores, [5], [0], members)


def test_circo_ap_hand_example_and_min_k_normaliser():
    # ground truths at ranks 1 and 3, |G| = 2: AP@5 = (1/1 + 2/3) / 2
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    out = circo_map(scores, [[0, 2]], ks=(1, 2, 5))
    assert out["map5"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert out["map1"] == pytest.approx(100.0)  # min(1, 2) = 1: one hit in one place
    assert out["map2"] == pytest.approx(100 * 1 / 2)
    # repeats count once; -1 pads a tensor
    assert circo_map(scores, torch.tensor([[2, 0, 0, -1]]), ks=(5,)) == pytest.approx({"map5": out["map5"]})
    with pytest.raises(ValueError, match="no ground truth"):
        circo_map(scores, torch.tensor([[-1, -1]]))


def test_all_three_match_loop_references_with_ties():
    torch.manual_seed(0)
    q, g = 40, 30
    scores = torch.randint(0, 6, (q, g)).float()  # many ties
    target = torch.randint(0, g, (q,))
    reference = (target + torch.randint(1, g, (q,))) % g
    subset = torch.stack([torch.cat([torch.stack([target[i], reference[i]]), torch.randperm(g)[:4]]) for i in range(q)])
    gts = [sorted({int(target[i]), *torch.randint(0, g, (int(torch.randint(0, 5, ())),)).tolist()}) for i in range(q)]
    ks = (1, 3, 10)
    r_hits, s_hits, ap = {k: 0 for k in ks}, {k: 0 for k in ks}, {k: 0.0 for k in ks}
    plain_hits = {k: 0 for k in ks}  # nothing removed (FashionIQ)
    for i in range(q):
        order = [j for j in ranking(scores[i]) if j != int(reference[i])]
        members = {int(m) for m in subset[i]} - {int(reference[i])}
        sub = [j for j in order if j in members]
        full = ranking(scores[i])
        for k in ks:
            r_hits[k] += int(target[i]) in order[:k]
            plain_hits[k] += int(target[i]) in full[:k]
            s_hits[k] += int(target[i]) in sub[:k]
            found, total = 0, 0.0
            for rank, j in enumerate(full[:k], start=1):
                if j in gts[i]:
                    found += 1
                    total += found / rank
            ap[k] += total / min(k, len(gts[i]))
    got = cirr_recall(scores, target, reference, ks, chunk_size=7)
    assert got == pytest.approx({f"r{k}": 100 * r_hits[k] / q for k in ks})
    got = recall_at_k(scores, target, ks, chunk_size=7)
    assert got == pytest.approx({f"r{k}": 100 * plain_hits[k] / q for k in ks})
    got = cirr_subset_recall(scores, target, reference, subset, ks)
    assert got == pytest.approx({f"r{k}": 100 * s_hits[k] / q for k in ks})
    got = circo_map(scores, gts, ks, chunk_size=7)
    assert got == pytest.approx({f"map{k}": 100 * ap[k] / q for k in ks})


def test_readable_errors():
    with pytest.raises(ValueError, match="NaN"):
        cirr_recall(torch.tensor([[float("nan"), 0.0]]), [1], [0])
    with pytest.raises(ValueError, match=r"gallery positions in \[0, 2\)"):
        cirr_recall(torch.zeros(1, 2), [2], [0])
    with pytest.raises(ValueError, match="2 entries for 1 score rows"):
        cirr_recall(torch.zeros(1, 3), [1, 2], [0, 0])
