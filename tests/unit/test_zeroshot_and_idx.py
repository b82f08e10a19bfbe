"""Zero-shot classification (CLIP prompt ensembling) and the IDX / Fashion-MNIST reader."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmembed.data.errors import DatasetFormatError
from mmembed.data.idx import FASHION_MNIST_ROOT, load_fashion_mnist, read_idx
from mmembed.eval.zeroshot import zeroshot_accuracy, zeroshot_classifier


def toy_text_model(n_classes: int, dim: int = 16):
    """Token 'ids' are class indices: the tokenizer maps 'x class<i> y' to i, the encoder to a fixed vector."""
    table = torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(0))

    def tokenizer(texts):
        return torch.tensor([int(t.split("class")[1].split()[0]) for t in texts])

    def encode_text(ids):
        return table[ids] * (1 + ids[:, None].float())  # scale must not matter

    return tokenizer, encode_text, table


def test_classifier_columns_are_normalised_means_of_normalised_prompts():
    tokenizer, encode_text, table = toy_text_model(4)
    templates = ["a photo of class{} .", "class{} again", "itself class{} !"]
    clf = zeroshot_classifier(encode_text, tokenizer, [str(i) for i in range(4)], templates)
    assert clf.shape == (16, 4)
    torch.testing.assert_close(clf.norm(dim=0), torch.ones(4))
    # every template maps to the same vector here, so the column is that class's direction
    torch.testing.assert_close(clf.T, F.normalize(table, dim=-1))
    with pytest.raises(ValueError, match="slot"):
        zeroshot_classifier(encode_text, tokenizer, ["0"], ["no slot"])
    with pytest.raises(ValueError, match="at least one"):
        zeroshot_classifier(encode_text, tokenizer, [], templates)


def test_identical_one_hot_features_score_100_percent():
    eye = torch.eye(10)
    clf = zeroshot_classifier(lambda ids: eye[ids], lambda texts: torch.tensor([int(t[-1]) for t in texts]),
                              [str(i) for i in range(10)], ["class {}"])
    labels = torch.arange(10).repeat(3)
    acc = zeroshot_accuracy(eye[labels] * 5.0, clf, labels)
    assert acc == {"top1": 100.0, "top5": 100.0}


def test_topk_accuracy_matches_a_loop_reference():
    g = torch.Generator().manual_seed(1)
    feats, clf = torch.randn(200, 8, generator=g), F.normalize(torch.randn(8, 7, generator=g), dim=0)
    labels = torch.randint(0, 7, (200,), generator=g)
    got = zeroshot_accuracy(feats, clf, labels, ks=(1, 3, 7))
    logits = F.normalize(feats, dim=-1) @ clf
    for k in (1, 3, 7):
        correct = 0
        for i in range(200):
            order = sorted(range(7), key=lambda c: -float(logits[i, c]))
            correct += int(labels[i]) in order[:k]
        assert got[f"top{k}"] == pytest.approx(100.0 * correct / 200)
    assert got["top7"] == 100.0
    with pytest.raises(ValueError, match="number of classes"):
        zeroshot_accuracy(feats, clf, labels, ks=(8,))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int32, 0x0C), (np.float32, 0x0D)])
def test_read_idx_round_trip(tmp_path, compress, dtype, code):
    values = np.arange(24).reshape(2, 3, 4)
    arr = (values if dtype == np.uint8 else values - 5).astype(dtype)  # negatives where the type allows
    raw = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


def test_read_idx_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="no such file"):
        read_idx(tmp_path / "missing")
    (tmp_path / "bad").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(DatasetFormatError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + np.asarray([5], ">u4").tobytes() + b"\x00\x01")
    with pytest.raises(DatasetFormatError, match="holds 2"):
        read_idx(tmp_path / "short")
    with pytest.raises(DatasetFormatError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_ROOT),
                    reason="needs the Debian package dataset-fashion-mnist (.ci/run installs it)")
def test_real_fashion_mnist_splits():
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split=split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(labels), [n // 10] * 10)  # balanced classes
        assert images.max() == 255 and images.min() == 0
