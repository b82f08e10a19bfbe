"""Fashion-MNIST image-caption datamodule: splits, caption grammar, held-out templates, errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from mmembed.data.errors import DatasetFormatError
from mmembed.data.fashion_mnist import (
    SYNONYMS,
    TRAIN_TEMPLATES,
    ZEROSHOT_TEMPLATES,
    FashionMNISTDataModule,
    make_captions,
)


def write_idx(path, arr: np.ndarray, code: int) -> None:
    raw = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(raw))


@pytest.fixture
def fake_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), 8)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8), 8)
    return tmp_path


def test_splits_captions_and_batches(fake_root, tiny_encoder):
    dm = FashionMNISTDataModule(root=str(fake_root), val_size=10, batch_size=8, processor=tiny_encoder().processor)
    dm.prepare_data()
    train = dm.build_train_dataset()
    assert len(train) == 30
    assert train[3]["text"] == train.captions[3]  # raw items; the model's processor collates them
    item = dm.collate_fn(train=True)([train[3]])
    assert item["image"].shape == (1, 3, 32, 16) and item["label"].tolist() == [3] and item["index"].tolist() == [3]
    assert item["text"].ndim == 2
    for caption, label in zip(train.captions, train.labels, strict=True):
        assert any(word in caption for word in SYNONYMS[label])
        assert any(caption == t.format(w) for t in TRAIN_TEMPLATES for w in SYNONYMS[label])
    queries, gallery = dm.build_eval_datasets("val")
    assert len(queries) == len(gallery) == 10
    np.testing.assert_array_equal(queries.labels, np.arange(30, 40) % 10)  # the last 10 training images
    assert all(any(q == t.format(w) for t in ZEROSHOT_TEMPLATES for w in SYNONYMS[lab])
               for q, lab in zip(queries.texts, queries.labels, strict=True))
    assert "text" not in gallery[0]
    queries, gallery = dm.build_eval_datasets("test")
    assert len(gallery) == 20
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 16) and batch["text"].shape[0] == 8


def test_subsets_keep_their_captions_and_templates_are_held_out(fake_root, tiny_encoder):
    labels = np.arange(50) % 10
    full, again = make_captions(labels, TRAIN_TEMPLATES, 0), make_captions(labels, TRAIN_TEMPLATES, 0)
    assert full == again and make_captions(labels[:7], TRAIN_TEMPLATES, 0) == full[:7]
    assert make_captions(labels, TRAIN_TEMPLATES, 1) != full
    assert not set(TRAIN_TEMPLATES) & set(ZEROSHOT_TEMPLATES)
    dm = FashionMNISTDataModule(root=str(fake_root), val_size=10, max_train=12, max_eval=4,
                                processor=tiny_encoder().processor)
    assert len(dm.build_train_dataset()) == 12
    assert [len(d) for d in dm.build_eval_datasets("val")] == [4, 4]
    assert [len(d) for d in dm.build_eval_datasets("test")] == [4, 4]


def test_missing_files_give_the_install_hint(tmp_path):
    dm = FashionMNISTDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetFormatError, match="apt-get install dataset-fashion-mnist"):
        dm.prepare_data()
    with pytest.raises(ValueError, match="val_size"):
        FashionMNISTDataModule(val_size=60000)


def test_zero_shot_callback_scores_the_validation_images(fake_root, tiny_encoder):
    import torch

    from mmembed.lit.callbacks import ZeroShotClassification

    encoder = tiny_encoder().eval()
    dm = FashionMNISTDataModule(root=str(fake_root), val_size=10, processor=encoder.processor)
    callback = ZeroShotClassification(ks=(1, 5))
    scores = callback.evaluate(dm, encoder, torch.device("cpu"))
    assert set(scores) == {"top1", "top5"} and 0 <= scores["top1"] <= scores["top5"] <= 100
    # the same numbers by hand: classifier from the class names x held-out templates
    from mmembed.eval.zeroshot import zeroshot_accuracy, zeroshot_classifier

    _, gallery = dm.eval_datasets("val")
    with torch.no_grad():
        feats = torch.stack([encoder.encode_image(encoder.processor.eval_image_transform(gallery[i]["image"])[None])
                             .embedding[0] for i in range(len(gallery))])
        clf = zeroshot_classifier(lambda ids: encoder.encode_text(ids).embedding, encoder.tokenizer,
                                  dm.classnames, dm.zeroshot_templates)
    labels = torch.tensor([gallery[i]["label"] for i in range(len(gallery))])
    expected = zeroshot_accuracy(feats, clf, labels, (1, 5))
    assert scores == pytest.approx(expected)
    with pytest.raises(ValueError, match="classnames and templates"):
        ZeroShotClassification().evaluate(object(), encoder, torch.device("cpu"))
