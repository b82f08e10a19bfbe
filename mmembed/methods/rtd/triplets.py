"""Text triplets for RTD: (reference caption, conditioning text, target caption).

RTD tunes the query-side text encoder on text alone. Triplets come from a file in the official
format (a JSON list, or JSON lines, of objects with ``reference_caption``, ``conditioning_caption``
and ``target_caption``) or from the rule-based generator here: swap one attribute word of a
caption for another value of the same kind and phrase the edit with a template ("make it blue",
"change red to blue"). The paper's source ablation reports rule-based triplets close to
LLM-written ones.

References:
    Byun et al., "An Efficient Post-hoc Framework for Reducing Task Discrepancy of Text Encoders
    for Composed Image Retrieval" (RTD), ICCV 2025, https://arxiv.org/abs/2406.09188.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DEFAULT_VOCABULARY", "TextTriplet", "clean_caption", "load_triplets", "rule_triplets", "save_triplets"]

KEYS = ("reference_caption", "conditioning_caption", "target_caption")

# kind -> (values, edit templates with {old} / {new})
DEFAULT_VOCABULARY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "colour": (("red", "green", "blue", "yellow", "black", "white", "grey", "brown", "pink", "purple", "orange"),
               ("make it {new}", "change the colour to {new}", "change {old} to {new}", "{new} instead of {old}")),
    "size": (("small", "large", "big", "tiny", "huge"),
             ("make it {new}", "change the size to {new}", "{new} instead of {old}")),
    "count": (("one", "two", "three", "four", "five"),
              ("make it {new}", "change {old} to {new}", "{new} instead of {old}")),
    "animal": (("dog", "cat", "horse", "cow", "sheep", "bird", "bear", "elephant", "zebra", "giraffe"),
               ("replace the {old} with a {new}", "change the {old} to a {new}", "a {new} instead of the {old}")),
    "vehicle": (("car", "bus", "truck", "bicycle", "motorcycle", "train", "boat", "airplane"),
                ("replace the {old} with a {new}", "change the {old} to a {new}", "a {new} instead of the {old}")),
}


@dataclass(frozen=True)
class TextTriplet:
    """One training triplet: ``target`` is ``reference`` edited as ``conditioning`` says."""

    reference: str
    conditioning: str
    target: str


def clean_caption(text: str) -> str:
    """The official cleaning: lower-case, drop ``$`` (the pseudo-word slot), ``<person>`` -> ``person``,
    collapse whitespace. Over-long captions are cut by the tokenizer (77 tokens)."""
    text = text.lower().replace("$", " ").replace("<person>", "person")
    return " ".join(text.split())


def load_triplets(path: str | Path) -> list[TextTriplet]:
    """Read triplets in the official format (a JSON list or JSON lines), cleaned.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: Naming the first entries without the three keys or with empty text, and the
            count of the rest.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no triplet file at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
        if isinstance(records, dict):
            records = [records]
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    bad = [i for i, r in enumerate(records)
           if not isinstance(r, Mapping) or any(not isinstance(r.get(k), str) or not r[k].strip() for k in KEYS)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} entries lack non-empty {', '.join(KEYS)} (first: {bad[:5]})")
    return [TextTriplet(*(clean_caption(r[k]) for k in KEYS)) for r in records]


def save_triplets(triplets: Iterable[TextTriplet], path: str | Path) -> Path:
    """Write triplets in the official JSON format (readable by :func:`load_triplets`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [dict(zip(KEYS, asdict(t).values(), strict=True)) for t in triplets]
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def rule_triplets(
    captions: Sequence[str],
    vocabulary: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None = None,
    per_caption: int = 1,
    seed: int = 0,
) -> list[TextTriplet]:
    """Rule-based triplets: one attribute word swapped for another value of its kind.

    For each caption (cleaned) and each of ``per_caption`` draws: pick one word occurrence that
    belongs to a kind of the vocabulary, a different value of that kind, and one of the kind's
    templates for the conditioning text. Captions without a vocabulary word give no triplet.

    Args:
        captions: Source captions.
        vocabulary: ``kind -> (values, templates)``; templates use ``{old}`` and ``{new}``.
        per_caption: Draws per caption (repeats are dropped).
        seed: Seed of the draws.

    Returns:
        The triplets, in caption order.
    """
    vocabulary = DEFAULT_VOCABULARY if vocabulary is None else vocabulary
    kind_of = {v: kind for kind, (values, _) in vocabulary.items() for v in values}
    if not kind_of:
        raise ValueError("the vocabulary has no values")
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, kind_of), key=len, reverse=True)) + r")\b")
    rng = random.Random(seed)
    out: list[TextTriplet] = []
    for caption in captions:
        text = clean_caption(caption)
        hits = list(pattern.finditer(text))
        seen: set[TextTriplet] = set()
        for _ in range(per_caption if hits else 0):
            hit = rng.choice(hits)
            old = hit.group()
            values, templates = vocabulary[kind_of[old]]
            new = rng.choice([v for v in values if v != old])
            target = text[:hit.start()] + new + text[hit.end():]
            triplet = TextTriplet(text, rng.choice(list(templates)).format(old=old, new=new), target)
            if triplet not in seen:
                seen.add(triplet)
                out.append(triplet)
    return out
