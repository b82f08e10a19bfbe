"""Readers for composed image retrieval benchmarks in their released file layouts.

* CIRR: ``captions/cap.rc2.{split}.json`` and ``image_splits/split.rc2.{split}.json`` under the root
  (``split``: ``train``, ``val`` or ``test1``; test targets are hidden in the real release).
* FashionIQ: ``captions/cap.{category}.{split}.json``, ``image_splits/split.{category}.{split}.json``
  and ``images/{id}.jpg`` (``category``: ``dress``, ``shirt`` or ``toptee``).
* CIRCO: ``annotations/{split}.json`` plus the COCO 2017 unlabeled gallery
  (``COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`` and
  ``COCO2017_unlabeled/unlabeled2017/``).
* GeneCIS object tasks (``focus_object`` / ``change_object``): a JSON list of ``condition``,
  ``reference``, ``target`` and ``gallery`` (distractors), each image a ``{"val_image_id": ...}``
  of COCO val2017 (``{id:012d}.jpg``). Each query ranks only its own gallery (target plus
  distractors), kept as ``members``: score it with ``cirr_subset_recall``.

Each reader returns a :class:`CIRSplit`: the queries with gallery *positions* (so metrics take
them directly) and the gallery's names and paths. Missing files or malformed entries stop with the
file name and the first offending entries. Nothing is written to a dataset folder.

The composed-query prompt (:data:`PROMPT`, ``"a photo of $ that {text}"``) and FashionIQ's two
caption orders (:func:`fashioniq_prompts`) live here too, beside the queries they format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PROMPT", "CIRQuery", "CIRSplit", "composed_prompt", "fashioniq_prompts", "read_circo", "read_cirr",
           "read_fashioniq", "read_genecis"]

# The composed-query prompt of every projection method here: "$" is the pseudo word, "{}" the modification.
PROMPT = "a photo of $ that {}"


def composed_prompt(text: str, template: str = PROMPT) -> str:
    """The query text of one modification: ``template`` filled with the text as written (surrounding
    whitespace aside; its punctuation stays, as in the official CIRR / CIRCO / GeneCIS and RTD code; only
    FashionIQ's captions are stripped, by :func:`fashioniq_prompts`)."""
    return template.format(text.strip())


def fashioniq_prompts(first: str, second: str, template: str = PROMPT) -> tuple[str, str]:
    """FashionIQ's two query texts: the captions joined with "and" in both orders (punctuation
    ``.?,`` stripped from both ends of each)."""
    a, b = (c.strip().strip(".?, ").strip() for c in (first, second))
    return template.format(f"{a} and {b}"), template.format(f"{b} and {a}")


@dataclass
class CIRQuery:
    """One composed query.

    Attributes:
        id: The benchmark's query id (CIRR ``pairid``, CIRCO ``id``, FashionIQ its position).
        reference: Gallery position of the reference image.
        texts: Modification texts (FashionIQ: two, used in both orders; others: one).
        target: Gallery position of the target, or None where the benchmark hides it.
        members: CIRR's ``img_set`` as gallery positions (for subset recall), else empty.
        ground_truth: Every correct gallery position (CIRCO: ``gt_img_ids``; else the target).
    """

    id: Any
    reference: int
    texts: list[str]
    target: int | None = None
    members: list[int] = field(default_factory=list)
    ground_truth: list[int] = field(default_factory=list)


@dataclass
class CIRSplit:
    """The queries and gallery of one benchmark split."""

    queries: list[CIRQuery]
    gallery_names: list[str]
    gallery_paths: list[Path]

    @property
    def position(self) -> dict[str, int]:
        """Gallery name -> position."""
        return {n: i for i, n in enumerate(self.gallery_names)}


def _read_json(path: Path, hint: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _check(records: list, required: tuple[str, ...], path: Path) -> None:
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict) or any(k not in r for k in required)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} entries lack one of {', '.join(required)} (first: {bad[:5]})")


def _positions(names: list[str], position: dict[str, int], path: Path, what: str) -> list[int]:
    missing = [n for n in names if n not in position]
    if missing:
        raise ValueError(f"{path}: {len(missing)} {what} are not in the gallery (first: {missing[:5]})")
    return [position[n] for n in names]


def read_cirr(root: str | Path, split: str = "val") -> CIRSplit:
    """CIRR (or SynthCIR): gallery = every image of the split file; queries keep ``members``.

    ``root`` is the dataset folder as released: annotations under ``cirr/captions`` and
    ``cirr/image_splits``, images (``train/``, ``dev/``, ``test1/``) at the paths the split files give,
    relative to ``root``. A folder with ``captions/`` and ``image_splits/`` directly under it (SynthCIR's
    layout) reads the same way.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: On malformed entries or names outside the gallery.
    """
    root = Path(root)
    annotations = root / "cirr" if (root / "cirr" / "captions").is_dir() else root
    hint = ("expected the CIRR layout (cirr/captions/cap.rc2.<split>.json and cirr/image_splits/split.rc2.<split>.json "
            "under the dataset folder, or captions/ and image_splits/ directly under it)")
    images = _read_json(annotations / "image_splits" / f"split.rc2.{split}.json", hint)
    names = list(images)
    paths = [root / images[n] for n in names]  # the split files' paths are relative to the dataset folder
    position = {n: i for i, n in enumerate(names)}
    cap_path = annotations / "captions" / f"cap.rc2.{split}.json"
    records = _read_json(cap_path, hint)
    _check(records, ("pairid", "reference", "caption", "img_set"), cap_path)
    queries = []
    for r in records:
        ref, = _positions([r["reference"]], position, cap_path, "references")
        target = _positions([r["target_hard"]], position, cap_path, "targets")[0] if r.get("target_hard") else None
        members = _positions(list(r["img_set"].get("members", [])), position, cap_path, "img_set members")
        queries.append(CIRQuery(r["pairid"], ref, [r["caption"]], target, members,
                                [target] if target is not None else []))
    return CIRSplit(queries, names, paths)


def read_fashioniq(root: str | Path, category: str, split: str = "val") -> CIRSplit:
    """FashionIQ: gallery = the category's split images (reference not removed); two captions per query.

    Raises:
        FileNotFoundError: If a file or image folder is missing.
        ValueError: On malformed entries, names outside the gallery, or a query without two captions.
    """
    root = Path(root)
    hint = "expected the FashionIQ layout (captions/cap.<category>.<split>.json, image_splits/split.<category>.<split>.json)"
    names = list(_read_json(root / "image_splits" / f"split.{category}.{split}.json", hint))
    paths = [root / "images" / f"{n}.jpg" for n in names]
    position = {n: i for i, n in enumerate(names)}
    cap_path = root / "captions" / f"cap.{category}.{split}.json"
    records = _read_json(cap_path, hint)
    _check(records, ("candidate", "captions"), cap_path)
    short = [i for i, r in enumerate(records) if len(r["captions"]) != 2]
    if short:
        raise ValueError(f"{cap_path}: {len(short)} entries do not have two captions (first: {short[:5]})")
    queries = []
    for i, r in enumerate(records):
        ref, = _positions([r["candidate"]], position, cap_path, "candidates")
        target = _positions([r["target"]], position, cap_path, "targets")[0] if r.get("target") else None
        queries.append(CIRQuery(i, ref, list(r["captions"]), target, [], [target] if target is not None else []))
    return CIRSplit(queries, names, paths)


def read_circo(root: str | Path, split: str = "val") -> CIRSplit:
    """CIRCO: gallery = COCO 2017 unlabeled; ground truths = ``gt_img_ids`` (val).

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: On malformed entries or ids outside the gallery.
    """
    root = Path(root)
    info = _read_json(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
                      "expected COCO2017_unlabeled/annotations/image_info_unlabeled2017.json under the CIRCO root")
    images = info["images"] if isinstance(info, dict) else info
    names = [str(im["id"]) for im in images]
    paths = [root / "COCO2017_unlabeled" / "unlabeled2017" / im["file_name"] for im in images]
    position = {n: i for i, n in enumerate(names)}
    ann_path = root / "annotations" / f"{split}.json"
    records = _read_json(ann_path, "expected annotations/<split>.json under the CIRCO root")
    _check(records, ("id", "reference_img_id", "relative_caption"), ann_path)
    queries = []
    for r in records:
        ref, = _positions([str(r["reference_img_id"])], position, ann_path, "references")
        gts = _positions([str(g) for g in r.get("gt_img_ids", [])], position, ann_path, "ground truths")
        target = _positions([str(r["target_img_id"])], position, ann_path, "targets")[0] if r.get("target_img_id") else None
        queries.append(CIRQuery(r["id"], ref, [r["relative_caption"]], target, [], gts))
    return CIRSplit(queries, names, paths)


@dataclass(frozen=True)
class RegionCrop:
    """A GeneCIS attribute-task image: the region ``bbox`` = (left, top, width, height) of a Visual Genome
    image, widened by ``dilation`` and padded to a black square, as GeneCIS's evaluation prepares it.

    The widened box starts ``dilation`` x (width, height) up and left of the region (clamped at the image
    border) and spans ``(1 + dilation)`` x (width, height) from there (clamped too), the official rule.
    """

    path: Path
    bbox: tuple[float, float, float, float]
    dilation: float = 0.7

    def load(self) -> Any:
        """The cropped, squared RGB image."""
        from PIL import Image

        with Image.open(self.path) as img:
            img = img.convert("RGB")
        left, top, width, height = self.bbox
        x0, y0 = max(0.0, left - self.dilation * width), max(0.0, top - self.dilation * height)
        x1 = min(img.width, x0 + (1 + self.dilation) * width)
        y1 = min(img.height, y0 + (1 + self.dilation) * height)
        crop = img.crop((x0, y0, x1, y1))
        side = max(crop.size)
        square = Image.new("RGB", (side, side), (0, 0, 0))
        square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
        return square

    def __str__(self) -> str:
        return f"{self.path}@{','.join(f'{v:g}' for v in self.bbox)}"


def read_genecis(task_file: str | Path, image_root: str | Path, dilation: float = 0.7) -> CIRSplit:
    """A GeneCIS task: per-query galleries (target first, then the distractors), the condition as text.

    Object tasks (``focus_object``, ``change_object``) name COCO val2017 images (``val_image_id``).
    Attribute tasks (``focus_attribute``, ``change_attribute``) name regions of Visual Genome images
    (``image_id`` + ``instance_bbox``), read as :class:`RegionCrop`; as in GeneCIS's evaluation, only
    queries whose gallery has the most common length are kept.

    Args:
        task_file: The task's JSON list (e.g. ``focus_object.json``).
        image_root: Folder of COCO val2017 images (object tasks) or Visual Genome images (attribute tasks).
        dilation: Region widening of attribute tasks (GeneCIS: 0.7).

    Raises:
        FileNotFoundError: If the task file is missing.
        ValueError: On malformed entries.
    """
    task_file, image_root = Path(task_file), Path(image_root)
    records = _read_json(task_file, "expected a GeneCIS task file (a JSON list)")
    _check(records, ("condition", "reference", "target", "gallery"), task_file)
    if records and isinstance(records[0]["reference"], dict) and "instance_bbox" in records[0]["reference"]:
        return _genecis_regions(records, image_root, dilation)

    def image_id(entry: Any) -> str:
        return str(entry["val_image_id"] if isinstance(entry, dict) else entry)

    names: list[str] = []
    position: dict[str, int] = {}

    def pos(entry: Any) -> int:
        name = image_id(entry)
        if name not in position:
            position[name] = len(names)
            names.append(name)
        return position[name]

    queries = []
    for i, r in enumerate(records):
        ref, target = pos(r["reference"]), pos(r["target"])
        members = [target, *(pos(g) for g in r["gallery"])]
        queries.append(CIRQuery(i, ref, [r["condition"]], target, members, [target]))
    paths = [image_root / f"{int(n):012d}.jpg" if n.isdigit() else image_root / n for n in names]
    return CIRSplit(queries, names, paths)


def _genecis_regions(records: list[dict], image_root: Path, dilation: float) -> CIRSplit:
    """Attribute tasks: every distinct (image, region) is one gallery entry."""
    lengths = [len(r["gallery"]) for r in records]
    modal = max(set(lengths), key=lambda n: (lengths.count(n), -n))
    crops: list[RegionCrop] = []
    position: dict[tuple[str, tuple[float, ...]], int] = {}

    def pos(entry: dict) -> int:
        key = (str(entry["image_id"]), tuple(float(v) for v in entry["instance_bbox"]))
        if key not in position:
            position[key] = len(crops)
            crops.append(RegionCrop(image_root / f"{key[0]}.jpg", key[1], dilation))  # type: ignore[arg-type]
        return position[key]

    queries = []
    for i, r in enumerate(records):
        if len(r["gallery"]) != modal:
            continue
        ref, target = pos(r["reference"]), pos(r["target"])
        queries.append(CIRQuery(i, ref, [r["condition"]], target, [target, *(pos(g) for g in r["gallery"])], [target]))
    return CIRSplit(queries, [str(c) for c in crops], crops)  # type: ignore[arg-type]
