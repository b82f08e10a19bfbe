"""SynthCIR: a composed-image-retrieval world of rendered objects, written in the CIRR layout.

Every image shows one object with four attributes: shape, colour, size and position (120
combinations). A composed query is a reference image plus a modification text that changes one
attribute ("make it blue", "move it to the bottom right"); its targets are all renders of the
edited combination. Part of the combinations are held out: they appear only as test targets,
never in training captions or queries. One paraphrase per attribute is held out for the test
queries as well.

The output follows CIRR, so the CIRR loader reads it unchanged:

* ``captions/cap.rc2.{train,val,test1}.json``: ``pairid``, ``reference``, ``target_hard``,
  ``target_soft``, ``caption``, ``img_set`` (``id``, ``members``: six images of the same shape,
  reference and target included);
* ``image_splits/split.rc2.{split}.json``: image name -> relative path (``./img/{name}.png``; every
  split's gallery holds every image);
* ``synth_captions.json`` (SynthCIR only): image name -> ``caption`` and ``held_out``, for
  pretraining a CLIP on the seen combinations (and for the oracle query, the target's caption);
* ``synth_meta.json``: the generation parameters and the held-out combinations;
* ``clip_{train,test}.jsonl``: (``filepath``, ``caption``) lists for
  :class:`~mmembed.data.image_text.ImageTextDataModule`: each seen render with every caption
  template, and every render with its own caption.

Unlike CIRR, whose test targets are hidden for its evaluation server, SynthCIR's ``test1`` file
keeps ``target_hard``. Only numpy and PIL are used; the output is byte-identical for a seed.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["COLOURS", "POSITIONS", "SHAPES", "SIZES", "TRIPLET_VOCABULARY", "Combo", "caption", "edits", "render",
           "write_synth_cir"]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
_RGB = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (235, 205, 40),
        "purple": (135, 50, 170)}
CAPTION_TEMPLATES = ("a {size} {colour} {shape} in the {position}", "a {colour} {shape}, {size}, at the {position}",
                     "there is a {size} {colour} {shape} in the {position} corner")
# per attribute: training paraphrases first, the held-out test paraphrase last
EDIT_TEMPLATES = {
    "colour": ("make it {new}", "change the colour to {new}", "paint it {new}", "recolour it {new}"),
    "shape": ("turn it into a {new}", "change the shape to a {new}", "make it a {new}", "replace it with a {new}"),
    "size": ("make it {new}", "change the size to {new}", "{new} instead", "resize it to {new}"),
    "position": ("move it to the {new}", "put it in the {new}", "place it at the {new}", "shift it to the {new}"),
}

# RTD's rule-based triplets on SynthCIR captions: the attribute values and the *training* paraphrases
TRIPLET_VOCABULARY = {
    "shape": (SHAPES, EDIT_TEMPLATES["shape"][:-1]),
    "colour": (COLOURS, EDIT_TEMPLATES["colour"][:-1]),
    "size": (SIZES, EDIT_TEMPLATES["size"][:-1]),
    "position": (POSITIONS, EDIT_TEMPLATES["position"][:-1]),
}


@dataclass(frozen=True)
class Combo:
    """One attribute combination."""

    shape: str
    colour: str
    size: str
    position: str

    @property
    def name(self) -> str:
        return f"{self.shape}-{self.colour}-{self.size}-{self.position.replace(' ', '_')}"


def caption(combo: Combo, template: int = 0) -> str:
    """The caption of a combination with one of :data:`CAPTION_TEMPLATES`."""
    return CAPTION_TEMPLATES[template].format(**vars(combo))


def edits(combo: Combo) -> list[tuple[str, str, Combo]]:
    """Every one-attribute edit of a combination: ``(attribute, new value, edited combination)``."""
    values = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}
    out = []
    for attr, options in values.items():
        for new in options:
            if new != getattr(combo, attr):
                out.append((attr, new, Combo(**{**vars(combo), attr: new})))
    return out


def render(combo: Combo, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """Draw a combination with jitter: position +-2 px (at 32 px), scale +-10%, light pixel noise."""
    s = 4  # supersampling
    img = Image.new("RGB", (size * s, size * s), (235, 235, 230))
    draw = ImageDraw.Draw(img)
    half = size * s / 2
    radius = (0.18 if combo.size == "small" else 0.32) * half * rng.uniform(0.9, 1.1)
    cx = half * (0.5 if "left" in combo.position else 1.5) + rng.uniform(-2, 2) * size * s / 32
    cy = half * (0.5 if "top" in combo.position else 1.5) + rng.uniform(-2, 2) * size * s / 32
    fill = _RGB[combo.colour]
    if combo.shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif combo.shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    arr = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    arr = arr + rng.normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_synth_cir(out: str | Path, seed: int = 0, renders: int = 3, holdout: float = 0.2,
                    queries_per_combo: int = 4, image_size: int = 32) -> dict:
    """Write SynthCIR to ``out`` (see the module docstring).

    Splits: the held-out combinations (``holdout`` of all) are test targets only; the other
    combinations are split 80/20 between train and val by reference. Train and val queries use
    the training paraphrases and targets among the seen combinations; test queries start from a
    seen combination, end at a held-out one and use the held-out paraphrase. Every split's
    gallery holds all renders of all combinations.

    Args:
        out: Dataset folder to create (must not exist or be empty).
        seed: Seed of everything.
        renders: Images per combination (jittered).
        holdout: Share of combinations held out as test targets.
        queries_per_combo: Queries drawn per reference combination.
        image_size: Image side in pixels.

    Returns:
        The metadata written to ``synth_meta.json``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    combos = [Combo(*c) for c in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS)]
    order = list(combos)
    rng.shuffle(order)
    held = set(order[: round(holdout * len(order))])
    seen = [c for c in combos if c not in held]
    val_refs = set(rng.sample(seen, round(0.2 * len(seen))))
    names: dict[Combo, list[str]] = {c: [f"{c.name}-{k}" for k in range(renders)] for c in combos}
    captions: dict[str, dict] = {}
    (out / "img").mkdir(parents=True)
    for c in combos:  # one gallery for every split: the split files all point here
        for k, name in enumerate(names[c]):
            render(c, nprng, image_size).save(out / "img" / f"{name}.png")
            captions[name] = {"caption": caption(c, k % len(CAPTION_TEMPLATES)), "held_out": c in held}
    (out / "captions").mkdir(parents=True)
    (out / "image_splits").mkdir(parents=True)
    pairid = 0
    for split in ("train", "val", "test1"):
        records = []
        refs = [c for c in seen if (c in val_refs) == (split == "val")] if split != "test1" else seen
        for ref in refs:
            options = [e for e in edits(ref) if (e[2] in held) == (split == "test1")]
            for attr, new, target in rng.sample(options, min(queries_per_combo, len(options))):
                templates = EDIT_TEMPLATES[attr]
                text = (templates[-1] if split == "test1" else rng.choice(templates[:-1])).format(new=new)
                ref_name, target_name = rng.choice(names[ref]), rng.choice(names[target])
                same_shape = [n for c in combos if c.shape == target.shape for n in names[c]
                              if n not in (ref_name, target_name)]
                members = [ref_name, target_name, *rng.sample(same_shape, 4)]
                rng.shuffle(members)
                records.append({"pairid": pairid, "reference": ref_name, "target_hard": target_name,
                                "target_soft": {n: 1.0 for n in names[target]}, "caption": text,
                                "img_set": {"id": pairid, "members": members}})
                pairid += 1
        (out / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(records, indent=1))
        paths = {n: f"./img/{n}.png" for c in combos for n in names[c]}
        (out / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(paths, indent=1))
    (out / "synth_captions.json").write_text(json.dumps(captions, indent=1))
    # CLIP pretraining lists: every caption template of every seen render; one caption per render for test
    rows = [json.dumps({"filepath": f"img/{n}.png", "caption": caption(c, t)})
            for c in seen for n in names[c] for t in range(len(CAPTION_TEMPLATES))]
    (out / "clip_train.jsonl").write_text("\n".join(rows) + "\n")
    rows = [json.dumps({"filepath": f"img/{n}.png", "caption": v["caption"]}) for n, v in captions.items()]
    (out / "clip_test.jsonl").write_text("\n".join(rows) + "\n")
    meta = {"seed": seed, "renders": renders, "holdout": holdout, "queries_per_combo": queries_per_combo,
            "image_size": image_size, "held_out": sorted(c.name for c in held)}
    (out / "synth_meta.json").write_text(json.dumps(meta, indent=1))
    return meta
