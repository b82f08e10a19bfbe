"""CIR benchmark readers on tiny files in the released layouts (CIRR via SynthCIR)."""

from __future__ import annotations

import json

import pytest

from mmembed.data.cir import read_circo, read_cirr, read_fashioniq
from mmembed.data.synthetic.cir import write_synth_cir


def test_cirr_reader_reads_synth_cir(tmp_path):
    write_synth_cir(tmp_path / "w", seed=0)
    split = read_cirr(tmp_path / "w", "test1")
    records = json.loads((tmp_path / "w" / "captions" / "cap.rc2.test1.json").read_text())
    assert len(split.queries) == len(records) and len(split.gallery_names) == 360
    q, r = split.queries[0], records[0]
    assert split.gallery_names[q.reference] == r["reference"] and split.gallery_names[q.target] == r["target_hard"]
    assert [split.gallery_names[m] for m in q.members] == r["img_set"]["members"]
    assert q.texts == [r["caption"]] and q.ground_truth == [q.target]
    assert all(p.exists() for p in split.gallery_paths)


def test_fashioniq_and_circo_layouts_and_errors(tmp_path):
    fiq = tmp_path / "fiq"
    (fiq / "captions").mkdir(parents=True)
    (fiq / "image_splits").mkdir()
    (fiq / "image_splits" / "split.dress.val.json").write_text(json.dumps(["a", "b", "c"]))
    (fiq / "captions" / "cap.dress.val.json").write_text(json.dumps(
        [{"candidate": "a", "target": "c", "captions": ["is red", "has sleeves"]}]))
    split = read_fashioniq(fiq, "dress")
    assert split.queries[0].reference == 0 and split.queries[0].target == 2
    assert split.queries[0].texts == ["is red", "has sleeves"] and split.gallery_paths[1].name == "b.jpg"
    (fiq / "captions" / "cap.dress.val.json").write_text(json.dumps([{"candidate": "z", "captions": ["x", "y"]}]))
    with pytest.raises(ValueError, match="not in the gallery"):
        read_fashioniq(fiq, "dress")
    with pytest.raises(FileNotFoundError, match="FashionIQ layout"):
        read_fashioniq(fiq, "shirt")

    circo = tmp_path / "circo"
    (circo / "COCO2017_unlabeled" / "annotations").mkdir(parents=True)
    (circo / "annotations").mkdir()
    images = [{"id": 7, "file_name": "000007.jpg"}, {"id": 9, "file_name": "000009.jpg"}, {"id": 4, "file_name": "x.jpg"}]
    (circo / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps({"images": images}))
    (circo / "annotations" / "val.json").write_text(json.dumps([
        {"id": 0, "reference_img_id": 7, "target_img_id": 9, "relative_caption": "is blue", "shared_concept": "a car",
         "gt_img_ids": [9, 4]}]))
    (q,) = read_circo(circo).queries
    assert (q.reference, q.target, q.ground_truth, q.texts) == (0, 1, [1, 2], ["is blue"])
    (circo / "annotations" / "val.json").write_text(json.dumps([{"id": 0}]))
    with pytest.raises(ValueError, match=r"lack one of .*\(first: \[0\]\)"):
        read_circo(circo)


def test_submission_files_follow_the_server_formats(tmp_path):
    import torch

    from mmembed.data.cir import CIRQuery, CIRSplit
    from mmembed.eval.cir_submission import circo_submission, cirr_submission

    names = [f"img{i}" for i in range(6)]
    split = CIRSplit([CIRQuery(17, 0, ["make it blue"], None, [0, 1, 2, 5])], names, [tmp_path / n for n in names])
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.7, 0.2]])
    recall, subset = cirr_submission(scores, split, tmp_path / "sub" / "cirr", top_k=4)
    r, s = json.loads(recall.read_text()), json.loads(subset.read_text())
    assert r == {"version": "rc2", "metric": "recall", "17": ["img4", "img2", "img3", "img5"]}  # reference 0 gone
    assert s == {"version": "rc2", "metric": "recall_subset", "17": ["img2", "img5", "img1"]}  # members minus 0
    path = circo_submission(scores, split, tmp_path / "circo.json", top_k=3)
    assert json.loads(path.read_text()) == {"17": ["img0", "img4", "img2"]}
    with pytest.raises(ValueError, match="queries, gallery"):
        circo_submission(scores[:, :3], split, tmp_path / "x.json")


def test_genecis_object_task_keeps_per_query_galleries(tmp_path):
    import torch

    from mmembed.data.cir import read_genecis
    from mmembed.metrics.cir import cirr_subset_recall

    task = [{"condition": "dog", "reference": {"val_image_id": 5}, "target": {"val_image_id": 8},
             "gallery": [{"val_image_id": 9}, {"val_image_id": 5}]}]
    (tmp_path / "focus_object.json").write_text(json.dumps(task))
    split = read_genecis(tmp_path / "focus_object.json", tmp_path / "val2017")
    (q,) = split.queries
    assert q.texts == ["dog"] and split.gallery_names[q.target] == "8"
    assert [split.gallery_names[m] for m in q.members] == ["8", "9", "5"]
    assert split.gallery_paths[0].name == "000000000005.jpg"
    scores = torch.tensor([[0.0, 0.2, 0.9]])  # positions: 5 (reference), 8 (target), 9
    assert cirr_subset_recall(scores, [q.target], [q.reference], [q.members], ks=(1, 2)) == {"r1": 0.0, "r2": 100.0}


def test_cirr_reads_the_released_layout_without_symlinks(tmp_path):
    import shutil

    flat = tmp_path / "flat"
    write_synth_cir(flat, seed=0)
    released = tmp_path / "CIRR"
    shutil.copytree(flat, released)
    (released / "cirr").mkdir()
    for folder in ("captions", "image_splits"):  # annotations under cirr/, images where the split files say
        shutil.move(str(released / folder), str(released / "cirr" / folder))
    a, b = read_cirr(flat, "val"), read_cirr(released, "val")
    assert a.gallery_names == b.gallery_names and [q.target for q in a.queries] == [q.target for q in b.queries]
    assert all(p.is_file() for p in b.gallery_paths)
    assert [p.relative_to(released) for p in b.gallery_paths] == [p.relative_to(flat) for p in a.gallery_paths]
    with pytest.raises(FileNotFoundError, match="cirr/captions"):
        read_cirr(tmp_path / "missing", "val")


def test_genecis_region_crops_follow_the_official_rule(tmp_path):
    import numpy as np
    from PIL import Image

    from mmembed.data.cir import RegionCrop

    pixels = np.arange(60 * 100 * 3, dtype=np.uint32).reshape(60, 100, 3) % 251
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "7.png")
    # inside: box widened 0.7 x (w, h) up-left, spanning 1.7 x (w, h): x 26..60, y 13..30, padded to 34 x 34
    crop = np.asarray(RegionCrop(tmp_path / "7.png", (40, 20, 20, 10)).load())
    assert crop.shape == (34, 34, 3)
    np.testing.assert_array_equal(crop[8:25], pixels[13:30, 26:60])
    assert not crop[:8].any() and not crop[25:].any()  # black bands above and below
    # at the border: clamped to the image, x 76..100, y 36..60
    edge = np.asarray(RegionCrop(tmp_path / "7.png", (90, 50, 20, 20)).load())
    np.testing.assert_array_equal(edge, pixels[36:60, 76:100])
