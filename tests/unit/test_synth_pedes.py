"""SynthPedes: determinism, CUHK-PEDES layout, identity/caption properties, safe writing and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmembed.data.synthetic import (
    PersonAttributes,
    make_captions,
    render_person,
    sample_identities,
    split_sizes,
    synth_pedes_matches,
    synth_pedes_meta,
    write_synth_pedes,
)
from mmembed.data.synthetic import persons as persons_module
from mmembed.data.synthetic.__main__ import main
from mmembed.data.synthetic.captions import COLOUR_SYNONYMS


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth_pedes(tmp_path_factory.mktemp("sp") / "a", num_ids=12, seed=3, images_per_id=2)


# ------------------------------------------------------------------------------------------- determinism
def test_same_seed_identical_bytes_whatever_workers(small: Path, tmp_path: Path) -> None:
    other = write_synth_pedes(tmp_path / "b", num_ids=12, seed=3, images_per_id=2, workers=2)
    a, b = _tree(small), _tree(other)
    assert a.keys() == b.keys() and len(a) == 12 * 2 + 3
    assert a == b


def test_different_seed_differs(small: Path, tmp_path: Path) -> None:
    other = _tree(write_synth_pedes(tmp_path / "c", num_ids=12, seed=4, images_per_id=2))
    mine = _tree(small)
    assert other["reid_raw.json"] != mine["reid_raw.json"]
    assert other["synth_attributes.json"] != mine["synth_attributes.json"]
    shared = [k for k in mine if k.endswith(".png") and k in other]
    assert shared and all(other[k] != mine[k] for k in shared)


def test_render_depends_only_on_rng_state() -> None:
    person = sample_identities(1, np.random.default_rng(0))[0]
    a = render_person(person, np.random.default_rng(7), (96, 48))
    b = render_person(person, np.random.default_rng(7), (96, 48))
    c = render_person(person, np.random.default_rng(8), (96, 48))
    assert a.size == (48, 96) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()


# ------------------------------------------------------------------------------------------------ layout
def test_layout_fields_ids_and_splits(small: Path) -> None:
    records = json.loads((small / "reid_raw.json").read_text())
    assert isinstance(records, list) and len(records) == 12 * 2
    for r in records:
        assert set(r) == {"id", "file_path", "captions", "split", "processed_tokens"}
        assert type(r["id"]) is int and isinstance(r["file_path"], str) and r["processed_tokens"] == []
        assert r["split"] in ("train", "val", "test") and r["file_path"].startswith(r["split"] + "/")
        assert len(r["captions"]) == 2 and all(isinstance(c, str) and c for c in r["captions"])
        with Image.open(small / "imgs" / r["file_path"]) as im:
            assert im.size == (64, 128) and im.mode == "RGB"
    ids = sorted({r["id"] for r in records})
    assert ids == list(range(1, 13))  # 1-based, contiguous
    split_of: dict[int, set[str]] = {}
    for r in records:
        split_of.setdefault(r["id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())  # disjoint identities
    per_split = {s: sorted(i for i, v in split_of.items() if s in v) for s in ("train", "val", "test")}
    assert {k: len(v) for k, v in per_split.items()} == split_sizes(12) == {"train": 9, "val": 1, "test": 2}
    assert per_split["train"] == list(range(1, 10))  # train pids = id - 1 are contiguous from 0
    pngs = sorted(str(p.relative_to(small / "imgs")) for p in (small / "imgs").rglob("*.png"))
    assert pngs == sorted(r["file_path"] for r in records)


def test_meta_and_attributes(small: Path) -> None:
    meta = json.loads((small / "synth_meta.json").read_text())
    assert meta == synth_pedes_meta(12, 3, images_per_id=2) and meta["version"] >= 1
    assert synth_pedes_matches(small, 12, 3, images_per_id=2)
    assert not synth_pedes_matches(small, 12, 3, images_per_id=3)
    assert not synth_pedes_matches(small, 12, 4, images_per_id=2)
    attrs = json.loads((small / "synth_attributes.json").read_text())
    assert [a["id"] for a in attrs] == list(range(1, 13))
    PersonAttributes(**{k: v for k, v in attrs[0].items() if k != "id"})  # round-trips


def test_custom_size_and_counts(tmp_path: Path) -> None:
    out = write_synth_pedes(tmp_path / "d", num_ids=3, seed=0, images_per_id=1, captions_per_image=3,
                            image_size=(96, 40))
    records = json.loads((out / "reid_raw.json").read_text())
    assert [r["split"] for r in records] == ["train", "val", "test"]
    assert all(len(r["captions"]) == 3 for r in records)
    with Image.open(out / "imgs" / records[0]["file_path"]) as im:
        assert im.size == (40, 96)


@pytest.mark.parametrize(("n", "expected"), [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (10, (7, 1, 2)),
                                             (500, (350, 50, 100))])
def test_split_sizes(n: int, expected: tuple[int, int, int]) -> None:
    sizes = split_sizes(n)
    assert (sizes["train"], sizes["val"], sizes["test"]) == expected


# ------------------------------------------------------------------------------------ identity properties
def test_identities_differ_in_at_least_two_attributes_but_share_values() -> None:
    people = sample_identities(400, np.random.default_rng(11))
    values = np.array([[str(v) for v in p.values()] for p in people])
    diff = (values[:, None, :] != values[None, :, :]).sum(-1)
    np.fill_diagonal(diff, 99)
    assert diff.min() >= 2
    assert people[0].differences(people[1]) == diff[0, 1]
    assert (diff == 2).any()  # close neighbours exist: retrieval is not trivial
    for k, name in enumerate(PersonAttributes.ATTRIBUTES):  # every attribute value is shared by many ids
        _, counts = np.unique(values[:, k], return_counts=True)
        assert counts.max() >= 20, name


def test_invalid_attributes_rejected() -> None:
    good = sample_identities(1, np.random.default_rng(0))[0].to_dict()
    with pytest.raises(ValueError):
        PersonAttributes(**{**good, "upper_colour": "chartreuse"})
    with pytest.raises(ValueError):
        PersonAttributes(**{**good, "accessory": "none", "accessory_colour": "red"})


# ------------------------------------------------------------------------------------------ caption truth
_CATEGORY = {
    "hair": "hair", "ponytail": "hair", "t-shirt": "upper", "tee": "upper", "top": "upper", "shirt": "upper",
    "jacket": "upper", "coat": "upper", "overcoat": "upper", "sweater": "upper", "jumper": "upper",
    "pullover": "upper", "trousers": "lower", "pants": "lower", "jeans": "lower", "shorts": "lower",
    "skirt": "lower", "miniskirt": "lower", "bottoms": "lower", "shoes": "shoes", "sneakers": "shoes",
    "trainers": "shoes", "bag": "acc", "handbag": "acc", "backpack": "acc", "rucksack": "acc", "cap": "acc",
    "hat": "acc",
}
_COLOUR_OF = {"hair": "hair_colour", "upper": "upper_colour", "lower": "lower_colour", "shoes": "shoe_colour",
              "acc": "accessory_colour"}
_COLOUR_WORD = {w: c for c, words in COLOUR_SYNONYMS.items() for w in words}


def _check_caption(p: PersonAttributes, caption: str) -> int:
    """Asserts that ``caption`` states only true values of ``p``; returns a lower bound of facts it states."""
    t = re.findall(r"[a-z]+(?:-[a-z]+)*", caption.lower())
    bigrams = set(zip(t, t[1:]))
    facts = 0
    for i, tok in enumerate(t):  # every colour word belongs to the next garment/hair/accessory noun
        if tok in _COLOUR_WORD:
            noun = next((w for w in t[i + 1:i + 4] if w in _CATEGORY), None)
            assert noun is not None, (caption, tok)
            assert getattr(p, _COLOUR_OF[_CATEGORY[noun]]) == _COLOUR_WORD[tok], (caption, p)
            facts += 1
    male = {"he", "man", "guy", "gentleman", "male"} & set(t)
    female = {"she", "woman", "lady", "girl", "female"} & set(t)
    assert not (male and female), caption
    if male or female:
        assert p.gender == ("male" if male else "female"), (caption, p)
        facts += 1
    checks = [  # (caption evidence, claimed value)
        ("jacket" in t, p.upper_type == "jacket"), ({"coat", "overcoat"} & set(t), p.upper_type == "coat"),
        ({"sweater", "jumper", "pullover"} & set(t), p.upper_type == "sweater"),
        ({"t-shirt", "tee", "short-sleeved"} & set(t), p.upper_type == "t-shirt"),
        ({"tank", "sleeveless", "vest"} & set(t), p.upper_type == "tank top"),
        ({"long-sleeved", "button-up"} & set(t) or ("shirt" in t and not bigrams & {("short-sleeved", "shirt")}),
         p.upper_type == "shirt"),
        ("shorts" in t or ("short", "pants") in bigrams, p.lower_type == "shorts"),
        ({"trousers", "jeans"} & set(t) or ("pants" in t and ("short", "pants") not in bigrams),
         p.lower_type == "trousers"),
        ("miniskirt" in t or ("short", "skirt") in bigrams, p.lower_type == "skirt"),
        ({"maxi", "ankle-length"} & set(t) or ("long", "skirt") in bigrams, p.lower_type == "long skirt"),
        ("skirt" in t, p.lower_type in ("skirt", "long skirt")),
        ("ponytail" in t, p.hair_style == "ponytail"), ("bun" in t, p.hair_style == "bun"),
        (any(t[j] == "hair" and "long" in t[max(0, j - 2):j] for j in range(len(t))), p.hair_style == "long"),
        (any(t[j] == "hair" and "short" in t[max(0, j - 2):j] for j in range(len(t))), p.hair_style == "short"),
        ("handbag" in t or ("bag" in t and ("no", "bag") not in bigrams), p.accessory == "bag"),
        ({"backpack", "rucksack"} & set(t), p.accessory == "backpack"), ({"cap", "hat"} & set(t), p.accessory == "hat"),
        ("nothing" in t or ("no", "bag") in bigrams, p.accessory == "none"),
    ]
    for evidence, truth in checks:
        if evidence:
            assert truth, (caption, p)
            facts += 1
    return facts


def test_captions_state_only_true_attribute_values() -> None:
    rng = np.random.default_rng(5)
    people = sample_identities(300, rng)
    seen: set[str] = set()
    for p in people:
        caps = make_captions(p, rng, 4)
        assert len(caps) == 4
        for cap in caps:
            assert cap[0].isupper() and cap.endswith(".")
            assert _check_caption(p, cap) >= 2, cap
            seen.add(cap)
    assert len(seen) > 1100  # varied grammar: nearly all captions are distinct


# -------------------------------------------------------------------------------------------- safe writes
def test_refuses_non_empty_folder_and_leaves_it_untouched(tmp_path: Path) -> None:
    target = tmp_path / "existing"
    (target / "imgs").mkdir(parents=True)
    (target / "reid_raw.json").write_text("[]")
    (target / "imgs" / "x.png").write_bytes(b"not a png")
    before, siblings = _tree(target), sorted(tmp_path.iterdir())
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_synth_pedes(target, num_ids=3, seed=0, images_per_id=1)
    assert _tree(target) == before and sorted(tmp_path.iterdir()) == siblings
    (tmp_path / "empty").mkdir()
    assert (write_synth_pedes(tmp_path / "empty", num_ids=3, seed=0, images_per_id=1) / "reid_raw.json").is_file()


def test_interrupted_run_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(task: object) -> None:
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(persons_module, "render_to_file", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synth_pedes(tmp_path / "out", num_ids=4, seed=0, images_per_id=2)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- command line
def test_cli_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["synth-pedes", "--out", str(out), "--ids", "4", "--seed", "2", "--images-per-id", "1",
            "--height", "64", "--width", "32", "--workers", "1"]
    assert main(args) == 0
    assert synth_pedes_matches(out, 4, 2, images_per_id=1, image_size=(64, 32))
    assert "4 ids" in capsys.readouterr().out
    assert main(args + ["--quiet"]) == 1  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    for bad, message in ((["--ids", "0"], "must be >= 1"), (["--ids", "many"], "expected an integer"),
                         (["--height", "8"], "must be >= 32"), (["--test-fraction", "1.5"], "must be in [0, 1)")):
        with pytest.raises(SystemExit) as exc:
            main(["synth-pedes", "--out", str(tmp_path / "x"), "--ids", "4", "--seed", "0", *bad])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["synth-pedes", "--help"])
    assert exc.value.code == 0 and "--images-per-id" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()


def test_package_import_is_lazy() -> None:
    code = ("import sys, mmembed.data.synthetic as s; "
            "assert 'mmembed.data.synthetic.persons' not in sys.modules; "
            "assert callable(s.write_synth_pedes) and 'mmembed.data.synthetic.persons' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
