"""LinCIR's self-masking with the rule-based tagger: keyword runs become one shared '$'."""

from __future__ import annotations

import importlib.util
import random

import pytest

from mmembed.methods.lincir.keywords import FALLBACK, keyword_spans, mask_keywords


@pytest.mark.parametrize(("caption", "masked"), [
    ("A man riding a red bike on the street.", "$ riding $ on $ ."),
    ("The cat is sleeping", "$ is sleeping"),
    ("a sleeping cat on a sofa", "$ on $"),
    ("two dogs playing in the snow", "two $ playing in $"),
    ("a woman wearing a black dress and holding an umbrella", "$ wearing $ and holding $"),
    ("Make it blue", "make it $"),
    ("$5 for a shirt", "5 for $"),  # the caption's own '$' is removed first
    ("", FALLBACK),
])
def test_rule_tagger_masks_determiner_adjective_noun_runs(caption, masked):
    assert mask_keywords(caption) == masked


def test_every_output_has_a_standalone_placeholder_for_the_tokenizer():
    import open_clip

    tok = open_clip.SimpleTokenizer(context_length=32)
    rng = random.Random(0)
    captions = ["is on", "the the", "in of at", "$$$", "a photo", "Running fast, jumping high!"]
    masked = [mask_keywords(c, rng) for c in captions]
    ids = tok(masked)
    assert ((ids == 259).sum(1) >= 1).all(), masked
    # no keyword: one random word is replaced, reproducibly for a seeded generator
    assert mask_keywords("is on", random.Random(3)) == mask_keywords("is on", random.Random(3))


def test_spans_are_in_order_and_cover_whole_words():
    text = "a small red circle in the top left"
    spans = keyword_spans(text)
    assert [text[s:e] for s, e in spans] == ["a small red circle", "the top left"]
    with pytest.raises(ValueError, match="tagger"):
        keyword_spans(text, tagger="nltk")


@pytest.mark.skipif(importlib.util.find_spec("spacy") is not None, reason="spaCy is installed here")
def test_spacy_tagger_says_how_to_get_it():
    with pytest.raises(ImportError, match="tagger='rules'"):
        mask_keywords("a red bike", tagger="spacy")
