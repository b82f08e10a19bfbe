"""LinCIR's self-masking: the keyword phrases of a caption become the pseudo-word ``$``.

A keyword is a maximal run of determiners, adjectives and nouns (spaCy POS tags DET / ADJ /
NOUN / PROPN in the reference). Every keyword occurrence is replaced by ``$``, all by the same
pseudo token; a caption without keywords gets one random word replaced, and an empty one becomes
``"a photo of $"``.

The default tagger is rule-based and needs no model: a word belongs to a keyword run unless it is
a function word (preposition, conjunction, pronoun, auxiliary, adverb, quantifier), a number or a
likely verb (a small list, plus ``-ing`` / ``-ed`` forms not right after a determiner). spaCy is used instead when
``tagger="spacy"`` and a pipeline is installed (``en_core_web_sm``); nothing is downloaded.

References:
    Gu et al., "Language-only Training of Zero-shot Composed Image Retrieval" (LinCIR), CVPR 2024,
    https://arxiv.org/abs/2312.01998 (self-masking projection).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Literal

__all__ = ["FALLBACK", "keyword_spans", "mask_keywords"]

FALLBACK = "a photo of $"
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_DETERMINERS = frozenset("a an the this that these those some any each every another no my your his her its our their".split())
_FUNCTION = frozenset("""
    about above across after against along among around as at before behind below beneath beside besides between beyond
    by down during except for from in inside into near of off on onto out outside over past since through throughout
    till to toward towards under underneath until up upon via with within without and or but nor so yet if while
    because although though whereas than then i me you he him she it we us they them who whom whose which what where
    when why how there here is are was were be been being am do does did doing done have has had having can could
    will would shall should may might must not very too also just only quite really almost rather while again still
    now even already
    all both either neither several many much more most few fewer less least
    """.split())
_NUMBERS = frozenset("zero one two three four five six seven eight nine ten eleven twelve dozen hundred".split())
_VERBS = frozenset("""
    sit sits stand stands walk walks run runs ride rides hold holds look looks play plays eat eats wear wears lie lies
    fly flies swim swims jump jumps carry carries pose poses stare stares watch watches wait waits talk talks throw
    throws catch catches drive drives park parks lay lays rest rests grazes graze sleeps sleep show shows shown
    make makes made take takes took taken go goes went get gets got give gives put puts set sets see sees seen
    contain contains containing feature features featuring appear appears seems seem
    """.split())


def _is_keyword_word(word: str, previous: str | None) -> bool:
    if word in _DETERMINERS:
        return True
    if word in _FUNCTION or word in _VERBS or word in _NUMBERS or word.isdigit():
        return False
    # "a man riding", "is sleeping": a verb; "a sleeping cat" keeps it
    return not (word.endswith(("ing", "ed")) and len(word) > 4 and previous not in _DETERMINERS)


def _rule_spans(caption: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = end = None
    prev: str | None = None
    for m in _WORD.finditer(caption):
        is_kw = _is_keyword_word(m.group(), prev)
        gap = caption[end:m.start()] if end is not None else ""
        if is_kw and start is not None and gap.strip() == "":
            end = m.end()  # extend the run across whitespace only
        elif is_kw:
            if start is not None:
                spans.append((start, end))
            start, end = m.start(), m.end()
        elif start is not None:
            spans.append((start, end))
            start = end = None
        prev = m.group()
    if start is not None:
        spans.append((start, end))
    # a run of determiners alone ("the") is not a keyword
    return [(s, e) for s, e in spans if any(w not in _DETERMINERS for w in _WORD.findall(caption[s:e]))]


@lru_cache(maxsize=1)
def _spacy_pipeline(name: str):  # spaCy is optional: no return annotation
    try:
        import spacy
    except ImportError as err:
        raise ImportError("tagger='spacy' needs spaCy (pip install spacy) and a local pipeline such as "
                          "en_core_web_sm; the default tagger='rules' needs neither") from err
    try:
        return spacy.load(name, disable=["parser", "ner", "lemmatizer"])
    except OSError as err:
        raise OSError(f"spaCy pipeline {name!r} is not installed; install it, or use tagger='rules'") from err


def _spacy_spans(caption: str, pipeline: str) -> list[tuple[int, int]]:
    doc = _spacy_pipeline(pipeline)(caption)
    spans: list[tuple[int, int]] = []
    for tok in doc:
        if tok.pos_ in ("NOUN", "PROPN", "ADJ", "DET"):
            if spans and spans[-1][1] >= tok.idx - 1 and doc[tok.i - 1].pos_ in ("NOUN", "PROPN", "ADJ", "DET"):
                spans[-1] = (spans[-1][0], tok.idx + len(tok.text))
            else:
                spans.append((tok.idx, tok.idx + len(tok.text)))
    return spans


def keyword_spans(caption: str, tagger: Literal["rules", "spacy"] = "rules",
                  spacy_pipeline: str = "en_core_web_sm") -> list[tuple[int, int]]:
    """Character spans of the keyword phrases of a (lower-cased) caption.

    Args:
        caption: The caption; callers lower-case it and strip ``$`` first (:func:`mask_keywords`).
        tagger: ``rules`` (no dependencies) or ``spacy``.
        spacy_pipeline: The installed spaCy pipeline for ``tagger="spacy"``.

    Returns:
        ``(start, end)`` pairs in caption order.
    """
    if tagger == "spacy":
        return _spacy_spans(caption, spacy_pipeline)
    if tagger != "rules":
        raise ValueError(f"tagger must be 'rules' or 'spacy', got {tagger!r}")
    return _rule_spans(caption)


def mask_keywords(caption: str, rng: random.Random | None = None, tagger: Literal["rules", "spacy"] = "rules",
                  spacy_pipeline: str = "en_core_web_sm") -> str:
    """LinCIR's masked caption: every keyword phrase replaced by ``$``.

    Args:
        caption: Any caption; it is lower-cased and its ``$`` characters are removed first.
        rng: Picks the word to replace when there is no keyword (default: a fresh ``Random(0)``).
        tagger: ``rules`` or ``spacy`` (see :func:`keyword_spans`).
        spacy_pipeline: The spaCy pipeline for ``tagger="spacy"``.

    Returns:
        The masked caption, containing at least one stand-alone ``$``.
    """
    text = " ".join(caption.lower().replace("$", " ").split())
    spans = keyword_spans(text, tagger, spacy_pipeline)
    if not spans:
        words = list(_WORD.finditer(text))
        if not words:
            return FALLBACK
        w = (rng or random.Random(0)).choice(words)
        spans = [(w.start(), w.end())]
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        out.append(" $ ")
        last = end
    out.append(text[last:])
    masked = " ".join("".join(out).split())
    return masked if "$" in masked else FALLBACK
