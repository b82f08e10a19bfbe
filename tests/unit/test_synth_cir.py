"""SynthCIR: CIRR-layout files, held-out combinations and paraphrases, determinism."""

from __future__ import annotations

import hashlib
import json

import pytest

from mmembed.data.synthetic.__main__ import main as data_main
from mmembed.data.synthetic.cir import (
    COLOURS,
    EDIT_TEMPLATES,
    POSITIONS,
    SHAPES,
    SIZES,
    write_synth_cir,
)


def digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_cirr_layout_holdouts_and_edits(tmp_path):
    meta = write_synth_cir(tmp_path / "w", seed=0)
    root = tmp_path / "w"
    held = set(meta["held_out"])
    assert len(held) == 24  # 20% of 120
    captions = json.loads((root / "synth_captions.json").read_text())
    assert len(captions) == 360 and all((root / "img" / f"{n}.png").exists() for n in captions)
    values = [*COLOURS, *SHAPES, *SIZES, *POSITIONS]
    held_texts = {t[-1].format(new=v) for t in EDIT_TEMPLATES.values() for v in values}
    for split in ("train", "val", "test1"):
        records = json.loads((root / "captions" / f"cap.rc2.{split}.json").read_text())
        paths = json.loads((root / "image_splits" / f"split.rc2.{split}.json").read_text())
        assert records and set(paths) == set(captions)
        for r in records:
            ref, tgt = r["reference"].rsplit("-", 1)[0], r["target_hard"].rsplit("-", 1)[0]
            assert ref not in held  # references are always seen combinations
            assert (tgt in held) == (split == "test1")  # held-out combinations are test targets only
            assert sum(a != b for a, b in zip(ref.split("-"), tgt.split("-"), strict=True)) == 1  # one attribute
            assert r["target_hard"] in r["target_soft"] and len(r["img_set"]["members"]) == 6
            assert {r["reference"], r["target_hard"]} <= set(r["img_set"]["members"])
            assert (r["caption"] in held_texts) == (split == "test1"), r["caption"]


def test_deterministic_and_cli(tmp_path):
    write_synth_cir(tmp_path / "a", seed=3)
    assert data_main(["synth-cir", "--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert data_main(["synth-cir", "--out", str(tmp_path / "b"), "--seed", "3"]) == 1  # not empty
    with pytest.raises(FileExistsError):
        write_synth_cir(tmp_path / "a", seed=3)
