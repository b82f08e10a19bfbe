"""Generic image-text data: webdataset tar shards and CSV / TSV / JSONL lists, built locally."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmembed.data.errors import DatasetFormatError
from mmembed.data.image_text import ImageTextDataModule, read_image_text


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 10, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    for s in range(2):
        write_shard(tmp_path / f"shard-{s}.tar", {
            f"{s:02d}{i:03d}": {"png": png_bytes(40 * s + 10 * i), "txt": f"caption {s} {i}".encode()}
            for i in range(3)})
    return tmp_path


def test_shards_read_by_offset(shards, tiny_encoder):
    samples = read_image_text(str(shards / "shard-*.tar"))
    assert [t for _, t in samples] == [f"caption {s} {i}" for s in range(2) for i in range(3)]
    ref, _ = samples[4]
    assert ref.load().getpixel((0, 0)) == (50, 50, 50)  # shard 1, sample 1: the exact image bytes
    dm = ImageTextDataModule(train=str(shards / "shard-*.tar"), val=str(shards / "shard-1.tar"),
                             batch_size=2, processor=tiny_encoder().processor)
    train = dm.build_train_dataset()
    item = dm.collate_fn(train=True)([train[5]])  # raw item -> batch through the model's processor
    assert item["image"].shape == (1, 3, 32, 16) and item["label"].tolist() == [5] and item["text"].ndim == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 16)
    queries, gallery = dm.build_eval_datasets("val")
    assert len(queries) == len(gallery) == 3


def test_lists_share_images_between_captions(tmp_path, tiny_encoder):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png_bytes(i * 20))
    rows = [("imgs/0.png", "a dark square"), ("imgs/1.png", "a grey square"), ("imgs/0.png", "black again"),
            ("imgs/2.png", "lighter")]
    with open(tmp_path / "pairs.csv", "w") as f:
        f.write("filepath,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))
    with open(tmp_path / "pairs.jsonl", "w") as f:
        f.write("".join(json.dumps({"image": p, "text": c}) + "\n" for p, c in rows))
    dm = ImageTextDataModule(train=str(tmp_path / "pairs.csv"), test=str(tmp_path / "pairs.csv"),
                             processor=tiny_encoder().processor)
    queries, gallery = dm.build_eval_datasets("test")
    assert len(queries) == 4 and len(gallery) == 3
    assert queries.labels == [0, 1, 0, 2]  # the two captions of imgs/0.png share their image
    jsonl = read_image_text(str(tmp_path / "pairs.jsonl"), image_col="image", text_col="text")
    assert [t for _, t in jsonl] == [c for _, c in rows]


def test_readable_errors(tmp_path, shards):
    with pytest.raises(DatasetFormatError, match="matched nothing"):
        read_image_text(str(tmp_path / "none-*.tar"))
    write_shard(tmp_path / "broken.tar", {"a": {"png": png_bytes(1)}, "b": {"txt": b"only text"}})
    with pytest.raises(DatasetFormatError, match="2 samples without both"):
        read_image_text(str(tmp_path / "broken.tar"))
    (tmp_path / "l.csv").write_text("path,title\nx.png,hi\n")
    with pytest.raises(DatasetFormatError, match="set image_col / text_col"):
        read_image_text(str(tmp_path / "l.csv"))
    with pytest.raises(DatasetFormatError, match="does not exist"):
        read_image_text(str(tmp_path / "l.csv"), image_col="path", text_col="title")
    (tmp_path / "x.zip").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="unsupported"):
        read_image_text(str(tmp_path / "x.zip"))
    with pytest.raises(ValueError, match="no val files"):
        ImageTextDataModule(train=str(shards / "shard-0.tar")).samples("val")
