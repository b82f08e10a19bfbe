"""RTD text triplets: the rule-based generator and the official JSON format."""

from __future__ import annotations

import json

import pytest

from mmembed.methods.rtd.triplets import (
    DEFAULT_VOCABULARY,
    TextTriplet,
    clean_caption,
    load_triplets,
    rule_triplets,
    save_triplets,
)


def test_rule_triplets_swap_one_attribute_of_the_same_kind():
    captions = ["A small RED circle in the top left", "a dog next to a blue car", "nothing to swap here"]
    triplets = rule_triplets(captions, per_caption=4, seed=0)
    assert triplets and all(t.reference != t.target for t in triplets)
    kinds = {v: k for k, (values, _) in DEFAULT_VOCABULARY.items() for v in values}
    for t in triplets:
        ref, tgt = t.reference.split(), t.target.split()
        changed = [(a, b) for a, b in zip(ref, tgt, strict=True) if a != b]
        assert len(changed) == 1  # exactly one word differs
        old, new = changed[0]
        assert kinds[old] == kinds[new]  # same kind: a colour for a colour
        assert new in t.conditioning
    assert not any(t.reference == "nothing to swap here" for t in triplets)
    assert rule_triplets(captions, per_caption=4, seed=0) == triplets  # seeded
    assert len({t for t in triplets}) == len(triplets)  # no repeats


def test_official_json_roundtrip_cleaning_and_errors(tmp_path):
    rows = [{"reference_caption": "A <PERSON> with a $ hat", "conditioning_caption": "make it RED",
             "target_caption": "a person with a red hat"}]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    (got,) = load_triplets(tmp_path / "t.json")
    assert got == TextTriplet("a person with a hat", "make it red", "a person with a red hat")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 2))
    assert load_triplets(tmp_path / "t.jsonl") == [got, got]
    assert load_triplets(save_triplets([got], tmp_path / "out.json")) == [got]
    (tmp_path / "bad.json").write_text(json.dumps([rows[0], {"reference_caption": "x"}]))
    with pytest.raises(ValueError, match=r"1 entries lack .*\(first: \[1\]\)"):
        load_triplets(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_triplets(tmp_path / "missing.json")
    assert clean_caption("  Two   $DOGS ") == "two dogs"


def test_prompts_and_refined_batch_order():
    from mmembed.methods.rtd.prompts import (
        REFERENCE_ONLY,
        composed_prompt,
        fashioniq_prompts,
        rtd_pairs,
    )

    assert composed_prompt(" is red. ") == "a photo of $ that is red."  # punctuation kept, as the official code
    assert fashioniq_prompts("is red.", "has long sleeves?") == (
        "a photo of $ that is red and has long sleeves", "a photo of $ that has long sleeves and is red")
    triplets = [TextTriplet("a red car", "make it blue", "a blue car"),
                TextTriplet("a small dog", "make it large", "a large dog")]
    queries, anchors, rows = rtd_pairs(triplets)
    assert queries == ["a photo of $ that make it blue", "a photo of $ that make it large", REFERENCE_ONLY, REFERENCE_ONLY]
    assert anchors == ["a blue car", "a large dog", "a red car", "a small dog"]
    assert rows == [0, 1, 0, 1]  # rows i and i + B share the reference's pseudo token
