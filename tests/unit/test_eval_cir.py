"""Composed-query scoring on SynthCIR with a tiny CLIP and an untrained phi: shapes, one row by hand,
FashionIQ's two orders, and each protocol's metric keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmembed.data.cir import CIRQuery, CIRSplit, read_cirr
from mmembed.eval.cir import cir_metrics, composed_scores, encode_images
from mmembed.nn.phi import Phi


@pytest.fixture
def world(synth_cir_world):
    return synth_cir_world


def test_scores_metrics_and_one_row_by_hand(world, tiny_encoder):
    encoder = tiny_encoder().eval()
    split = read_cirr(world, "val")
    gallery = encode_images(encoder, split.gallery_paths, batch_size=128, progress=False)
    torch.manual_seed(0)
    phi = Phi(encoder.embed_dim, encoder.model.token_embedding.weight.shape[1]).eval()
    scores = composed_scores(split, gallery, phi, encoder, batch_size=32)
    assert scores.shape == (len(split.queries), 360)
    q = split.queries[5]
    with torch.no_grad():
        ids = encoder.tokenizer([f"a photo of $ that {q.texts[0]}"])
        feat = encoder.encode_text(ids, pseudo_tokens=phi(gallery[[q.reference]])).embedding
        row = F.normalize(feat, dim=-1) @ F.normalize(gallery, dim=-1).T
    torch.testing.assert_close(scores[5], row[0], rtol=1e-5, atol=1e-5)
    metrics = cir_metrics(scores, split, "cirr")
    assert set(metrics) == {"r1", "r5", "r10", "r50", "subset_r1", "subset_r2", "subset_r3"}
    assert all(0 <= v <= 100 for v in metrics.values())
    assert set(cir_metrics(scores, split, "circo")) == {"map5", "map10", "map25", "map50", "r5", "r10", "r25", "r50"}
    assert set(cir_metrics(scores, split, "genecis")) == {"r1", "r2", "r3"}


def test_fashioniq_averages_both_orders(world, tiny_encoder):
    encoder = tiny_encoder().eval()
    paths = sorted((world / "img").iterdir())[:10]
    split = CIRSplit([CIRQuery(0, 1, ["is red.", "has a square"], 3, [], [3])], [p.stem for p in paths], paths)
    gallery = encode_images(encoder, paths, progress=False)
    phi = Phi(encoder.embed_dim, encoder.model.token_embedding.weight.shape[1]).eval()
    scores = composed_scores(split, gallery, phi, encoder, protocol="fashioniq")
    with torch.no_grad():
        s = phi(gallery[[1]])
        q1, q2 = (F.normalize(encoder.encode_text(encoder.tokenizer([t]), pseudo_tokens=s).embedding, dim=-1)
                  for t in ("a photo of $ that is red and has a square", "a photo of $ that has a square and is red"))
        want = F.normalize(q1 + q2, dim=-1) @ F.normalize(gallery, dim=-1).T
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-5)
    rank = int((scores[0] > scores[0, 3]).sum())
    assert cir_metrics(scores, split, "fashioniq") == {"r10": 100.0 * (rank < 10), "r50": 100.0}


def test_hidden_targets_ask_for_a_submission():
    split = CIRSplit([CIRQuery(0, 0, ["x"])], ["a", "b"], [])
    with pytest.raises(ValueError, match="submission"):
        cir_metrics(torch.zeros(1, 2), split, "cirr")


def test_circo_recall_counts_only_the_captions_own_target():
    # gallery of 8; the query's own target is 2, its ground truths {2, 3}; 3 ranks first, 2 sixth
    paths = [Path(f"{i}.png") for i in range(8)]
    split = CIRSplit([CIRQuery(0, 0, ["is red"], 2, [], [2, 3])], [p.stem for p in paths], paths)
    scores = torch.tensor([[0.5, 0.6, 0.3, 0.9, 0.8, 0.7, 0.65, 0.1]])
    got = cir_metrics(scores, split, "circo")
    assert got["r5"] == 0.0 and got["r10"] == 100.0  # a ground truth at rank 1 does not count for recall
    assert got["map5"] == pytest.approx(100 * (1 / 1) / 2)  # AP@5: one hit at rank 1, min(5, |G|) = 2
    hidden = CIRSplit([CIRQuery(0, 0, ["is red"], None, [], [2, 3])], [p.stem for p in paths], paths)
    assert set(cir_metrics(scores, hidden, "circo")) == {"map5", "map10", "map25", "map50"}  # no target: mAP only
