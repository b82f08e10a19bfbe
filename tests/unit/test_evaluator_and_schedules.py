"""Lightning-free evaluator (accumulate, dedupe, score, rank) and the warm-up cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from mmembed.eval.evaluator import RetrievalEvaluator, evaluate_retrieval
from mmembed.lit.schedulers import WarmupCosineLR, warmup_cosine_factor
from mmembed.metrics.retrieval import retrieval_metrics


def test_evaluator_matches_metrics_and_ignores_duplicates():
    torch.manual_seed(0)
    q, g = torch.randn(9, 6), torch.randn(7, 6)
    ql, gl = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 1, 1, 2, 2, 1])
    ev = RetrievalEvaluator()
    # shuffled batches and a padded repeat (as a distributed sampler would produce)
    for idx in (torch.tensor([4, 0, 8]), torch.tensor([1, 2, 3]), torch.tensor([5, 6, 7, 0])):
        ev.add("query", q[idx], ql[idx], idx)
    for idx in (torch.tensor([6, 5, 4, 3]), torch.tensor([2, 1, 0, 6])):
        ev.add("gallery", g[idx], gl[idx], idx)
    qn, gn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(g, dim=-1)
    expected = retrieval_metrics(qn @ gn.T, ql, gl)
    got = ev.compute(gather=False)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], abs=1e-4)
    assert ev.sizes == (9, 7)


def test_image_to_text_with_five_captions_per_image():
    # 4 images, 5 captions each (label = image id). Planted scores: every caption ranks its image
    # first except caption 15 (image 3), which ranks image 0 first, and caption 10 (image 2), which
    # ranks image 1 first. So images 0 and 1 each see a foreign caption above their own five.
    n_img, n_cap = 4, 5
    cap_labels = torch.arange(n_img).repeat_interleave(n_cap)  # (20,)
    s = torch.full((n_img * n_cap, n_img), 0.0)  # caption x image scores
    s[torch.arange(20), cap_labels] = 1.0
    s[15, 0], s[15, 3] = 2.0, 1.5
    s[10, 1] = 3.0  # a caption of image 2 that scores highest for image 1
    # t2i, per caption: 18 of 20 captions find their image first; the other two at rank 2
    ev = RetrievalEvaluator(ks=(1, 5))
    # exact scores through embeddings: query rows are the score rows, gallery rows the identity
    ev.normalize = False
    ev.add("query", s, cap_labels, torch.arange(20))
    ev.add("gallery", torch.eye(n_img), torch.arange(n_img), torch.arange(n_img))
    t2i = ev.compute(gather=False)
    assert t2i["r1"] == pytest.approx(100 * 18 / 20) and t2i["r5"] == pytest.approx(100.0)
    # i2t: a hit when any of the image's 5 captions is in the top k
    i2t = ev.compute(gather=False, reverse=True)
    ranks = []  # slow reference: rank of each image's best own caption
    for i in range(n_img):
        order = torch.sort(s[:, i], descending=True, stable=True).indices
        ranks.append(int(torch.nonzero(cap_labels[order] == i)[0]) + 1)
    assert ranks == [2, 2, 1, 1]
    assert i2t["r1"] == pytest.approx(100 * 2 / 4) and i2t["r5"] == pytest.approx(100.0)
    assert ev.sizes == (20, 4)  # the forward direction's sizes


def test_evaluator_partial_gallery_drop_or_raise():
    ev = RetrievalEvaluator()
    ev.add("query", torch.eye(3), torch.tensor([0, 1, 2]), torch.arange(3))
    ev.add("gallery", torch.eye(3)[:2], torch.tensor([0, 1]), torch.arange(2))
    with pytest.raises(ValueError):
        ev.compute(gather=False)
    assert ev.compute(gather=False, drop_queries_without_positives=True)["r1"] == pytest.approx(100.0)


def test_top_k_tie_rule_lower_gallery_index_first():
    ev = RetrievalEvaluator(normalize=False)
    ev.add("query", torch.tensor([[1.0, 0.0]]), torch.tensor([1]), torch.tensor([0]))
    # gallery 0, 2 and 3 tie; 1 is best
    ev.add("gallery", torch.tensor([[0.5, 0], [0.9, 0], [0.5, 0], [0.5, 0]]), torch.tensor([0, 0, 1, 1]), torch.arange(4))
    _, ranked, correct = ev.top_k(1, k=4, gather=False)
    assert ranked.tolist() == [[1, 0, 2, 3]]
    assert correct.tolist() == [[False, False, True, True]]


def test_evaluate_retrieval_with_a_plain_model():
    class Identity:
        def encode_query_batch(self, batch):
            return batch["x"]

        def encode_gallery_batch(self, batch):
            return batch["x"]

    queries = [{"x": torch.eye(4)[:2], "label": torch.tensor([0, 1]), "index": torch.tensor([0, 1])}]
    gallery = [{"x": torch.eye(4), "label": torch.tensor([0, 1, 2, 3]), "index": torch.arange(4)}]
    out = evaluate_retrieval(Identity(), queries, gallery)
    assert out["r1"] == 100.0 and out["map"] == 100.0 and out["minp"] == 100.0


def test_warmup_cosine_matches_rde_schedule():
    # RDE/IRRA: 5 warm-up epochs from 0.1, cosine to epoch 60
    factors = [warmup_cosine_factor(e, 5, 60, 0.1, 0.0) for e in range(60)]
    assert factors[:5] == pytest.approx([0.10, 0.28, 0.46, 0.64, 0.82])
    assert factors[5] == pytest.approx(1.0)
    assert factors[59] == pytest.approx(0.5 * (1 + math.cos(math.pi * 54 / 55)))
    assert factors[59] == pytest.approx(8.2e-4, abs=1e-4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = WarmupCosineLR(opt, warmup=5, total=60)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2 * f for f in factors[:7]])
    with pytest.raises(ValueError):
        WarmupCosineLR(opt, warmup=1, total=0)
