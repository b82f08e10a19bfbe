"""PEDES loader: record expansion, splits, and readable errors for bad dataset folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.data.errors import DatasetFormatError
from mmembed.data.reid import PedesDataModule, load_pedes_annotations
from mmembed.nn.encoders.transforms import build_image_transforms
from mmembed.types import Processor


def write_dataset(root: Path, entries: list[dict], make_images: bool = True) -> Path:
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for e in entries:
        path = e.get("file_path")
        if make_images and isinstance(path, str) and path:
            (root / "imgs" / path).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16), (40, 0, 0)).save(root / "imgs" / path)
    (root / "reid_raw.json").write_text(json.dumps(entries))
    return root


def good_entries() -> list[dict]:
    out = []
    for pid, split in [(1, "train"), (2, "train"), (3, "val"), (4, "test"), (5, "test")]:
        for k in range(2):
            out.append({"id": pid, "file_path": f"p{pid}/{k}.png", "captions": [f"cap {pid}-{k}-a", f"cap {pid}-{k}-b"],
                        "split": split, "processed_tokens": []})
    return out




def processor() -> Processor:
    train, evaluation = build_image_transforms((16, 8))
    return Processor(train, evaluation, lambda texts: torch.zeros(len(texts), 4, dtype=torch.long))


def test_records_expand_in_json_then_caption_order(tmp_path):
    root = write_dataset(tmp_path / "ds", good_entries())
    dm = PedesDataModule(str(root), batch_size=2, processor=processor())
    train = dm.build_train_dataset()
    assert train.captions[:4] == ["cap 1-0-a", "cap 1-0-b", "cap 1-1-a", "cap 1-1-b"]
    assert train.labels == [0, 0, 0, 0, 1, 1, 1, 1]  # CUHK ids are 1-based; train pids contiguous from 0
    queries, gallery = dm.build_eval_datasets("test")
    assert len(queries) == 8 and len(gallery) == 4
    assert queries.labels == [4, 4, 4, 4, 5, 5, 5, 5] and gallery.labels == [4, 4, 5, 5]
    item = dm.collate_fn(train=False)([gallery[0]])  # raw item -> batch through the model's processor
    assert item["image"].shape == (1, 3, 16, 8) and item["index"].tolist() == [0]
    qv, gv = dm.build_eval_datasets("val")
    assert gv.labels == [3, 3]


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"reid_raw\.json: annotation file not found"):
        load_pedes_annotations(tmp_path)


def test_malformed_json_names_file_and_position(tmp_path):
    (tmp_path / "reid_raw.json").write_text('[{"id": 1,]')
    with pytest.raises(DatasetFormatError, match=r"reid_raw\.json: malformed JSON at line 1, column \d+"):
        load_pedes_annotations(tmp_path)


def test_missing_images_listed_with_count(tmp_path, folder_digest):
    entries = good_entries()
    root = write_dataset(tmp_path, entries)
    for e in entries[:7]:
        (root / "imgs" / e["file_path"]).unlink()
    before = folder_digest(root)
    with pytest.raises(DatasetFormatError) as err:
        load_pedes_annotations(root)
    msg = str(err.value)
    assert "reid_raw.json: 7 entries whose image file is missing" in msg
    assert "entry 0:" in msg and "p1/0.png" in msg and "(and 2 more)" in msg
    assert folder_digest(root) == before  # nothing in the dataset folder is modified


def test_empty_captions(tmp_path):
    entries = good_entries()
    entries[3]["captions"] = []
    entries[5]["captions"] = ["fine", "   "]
    root = write_dataset(tmp_path, entries)
    with pytest.raises(DatasetFormatError, match=r"2 entries with empty captions: entry 3 \(p2/1\.png\); entry 5"):
        load_pedes_annotations(root)


def test_mistyped_fields(tmp_path):
    entries = good_entries()
    entries[0]["id"] = "one"
    del entries[2]["split"]
    root = write_dataset(tmp_path, entries)
    entries[4] = "not a dict"
    (root / "reid_raw.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetFormatError, match=r"3 entries with missing or mistyped fields: entry 0: 'id' must be an integer"):
        load_pedes_annotations(root)


def test_not_a_list(tmp_path):
    (tmp_path / "reid_raw.json").write_text('{"id": 1}')
    with pytest.raises(DatasetFormatError, match="expected a JSON list"):
        load_pedes_annotations(tmp_path)


def test_missing_processor_is_explained(tmp_path):
    root = write_dataset(tmp_path, good_entries())
    with pytest.raises(RuntimeError, match="processor=model.processor"):
        PedesDataModule(str(root), batch_size=2).train_dataloader()


def test_synth_datamodule_generates_once_and_refuses_other_parameters(tmp_path, folder_digest):
    from mmembed.data.synth import SynthPedesDataModule

    root = tmp_path / "world"
    kw = dict(num_ids=4, images_per_id=1, captions_per_image=1, image_height=32, image_width=16, workers=1)
    SynthPedesDataModule(str(root), seed=0, **kw).prepare_data()
    assert (root / "reid_raw.json").is_file()
    before = folder_digest(root)
    SynthPedesDataModule(str(root), seed=0, **kw).prepare_data()  # same parameters: reused as is
    with pytest.raises(DatasetFormatError, match=r"seed: folder has 0, config asks 1"):
        SynthPedesDataModule(str(root), seed=1, **kw).prepare_data()
    assert folder_digest(root) == before
    other = write_dataset(tmp_path / "real", good_entries())
    with pytest.raises(DatasetFormatError, match="not a SynthPedes folder"):
        SynthPedesDataModule(str(other), **kw).prepare_data()


def test_caption_noise_touches_train_only(tmp_path, folder_digest):
    from mmembed.methods.rde.noise import CaptionShuffle, clean_flags, noise_index

    root = write_dataset(tmp_path / "ds", good_entries())
    before = folder_digest(root)
    clean_dm = PedesDataModule(str(root), processor=processor())
    noisy_dm = PedesDataModule(str(root), processor=processor(), caption_noise=CaptionShuffle(0.5, seed=1))
    clean, noisy = clean_dm.build_train_dataset(), noisy_dm.build_train_dataset()
    idx = noise_index(len(clean), 0.5, 1)
    assert noisy.captions == [clean.captions[j] for j in idx]
    assert noisy.labels == clean.labels and noisy.image_paths == clean.image_paths  # pids and images stay
    assert np.array_equal(noisy.clean, clean_flags(idx)) and clean.clean.all()
    assert noisy_dm.build_eval_datasets("test")[0].texts == clean_dm.build_eval_datasets("test")[0].texts
    assert folder_digest(root) == before
    with pytest.raises(ValueError, match="permutation"):
        PedesDataModule(str(root), processor=processor(), caption_noise=lambda n: np.zeros(n)).build_train_dataset()
