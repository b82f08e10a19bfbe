"""PEDES-style text-to-image person datasets (CUHK-PEDES, ICFG-PEDES, RSTPReid, SynthPedes).

A dataset folder holds one JSON list (``reid_raw.json`` for CUHK-PEDES) and an
image folder (``imgs/``). Each entry has an identity ``id``, an image path, a
list of ``captions`` and a ``split``. Training records are expanded in JSON
order, then caption order (noise-index files depend on this order); the test
set has every image once as gallery and every caption once as a query.

Nothing in a dataset folder is ever written to.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from mmembed.data.base import CaptionQueries, ImageGallery, RetrievalDataModule, Split
from mmembed.data.errors import DatasetFormatError, describe_offenders

Flavour = Literal["CUHK-PEDES", "ICFG-PEDES", "RSTPReid"]

#: (annotation file names tried in order, image path key)
FLAVOURS: dict[str, tuple[tuple[str, ...], str]] = {
    "CUHK-PEDES": (("reid_raw.json",), "file_path"),
    "ICFG-PEDES": (("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path"),
    "RSTPReid": (("data_captions.json",), "img_path"),
}


@dataclass(frozen=True)
class PedesEntry:
    """One annotated image."""

    pid: int
    image: Path
    captions: tuple[str, ...]
    split: str


def load_pedes_annotations(root: str | Path, flavour: Flavour = "CUHK-PEDES", check_images: bool = True) -> list[PedesEntry]:
    """Read and validate a PEDES annotation file.

    Args:
        root: Dataset folder holding the JSON file and the ``imgs/`` folder.
        flavour: Which dataset's file name and path key to use.
        check_images: Verify that every referenced image exists.

    Returns:
        Entries in file order. ``split`` is ``"train"``, ``"test"`` or ``"val"``
        (any other value counts as val, as in the reference code).

    Raises:
        DatasetFormatError: missing or malformed file, bad entries, empty
            captions or missing images; the message names the file and the first
            offending entries with a count for the rest.
    """
    root = Path(root)
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {sorted(FLAVOURS)}, got {flavour!r}")
    names, path_key = FLAVOURS[flavour]
    candidates = [root / n for n in names]
    ann = next((p for p in candidates if p.is_file()), None)
    if ann is None:
        hint = " (create one with: mmembed-data synth-pedes --out DIR --ids N --seed S)" if flavour == "CUHK-PEDES" else ""
        raise DatasetFormatError(f"{candidates[0]}: annotation file not found{hint}")
    try:
        raw = json.loads(ann.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{ann}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(raw, list):
        raise DatasetFormatError(f"{ann}: expected a JSON list of entries, found {type(raw).__name__}")
    bad_fields, empty_caps, missing_imgs = [], [], []
    entries: list[PedesEntry] = []
    image_root = root / "imgs"
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            bad_fields.append(f"entry {i}: not an object")
            continue
        problems = []
        if not isinstance(item.get("id"), int) or isinstance(item.get("id"), bool):
            problems.append("'id' must be an integer")
        if not isinstance(item.get(path_key), str) or not item.get(path_key):
            problems.append(f"'{path_key}' must be a non-empty string")
        if not isinstance(item.get("captions"), list):
            problems.append("'captions' must be a list")
        if not isinstance(item.get("split"), str):
            problems.append("'split' must be a string")
        if problems:
            bad_fields.append(f"entry {i}: " + "; ".join(problems))
            continue
        caps = item["captions"]
        if not caps or any(not isinstance(c, str) or not c.strip() for c in caps):
            empty_caps.append(f"entry {i} ({item[path_key]})")
            continue
        image = image_root / item[path_key]
        if check_images and not image.is_file():
            missing_imgs.append(f"entry {i}: {image}")
        split = item["split"] if item["split"] in ("train", "test") else "val"
        entries.append(PedesEntry(int(item["id"]), image, tuple(caps), split))
    if bad_fields:
        raise DatasetFormatError(describe_offenders(ann, "entries with missing or mistyped fields", bad_fields))
    if empty_caps:
        raise DatasetFormatError(describe_offenders(ann, "entries with empty captions", empty_caps))
    if missing_imgs:
        raise DatasetFormatError(describe_offenders(ann, "entries whose image file is missing", missing_imgs))
    return entries


#: Maps the number of training records to a caption index (record ``i`` gets caption ``idx[i]``).
CaptionNoise = Callable[[int], Any]


class PedesPairs(Dataset):
    """Training records: one (image, caption) pair per caption, contiguous pids from 0.

    Args:
        entries: Training entries, in file order.
        caption_noise: Optional callable ``n -> idx`` (a permutation of ``range(n)``); record
            ``i`` then gets the caption of record ``idx[i]`` (synthetic noisy correspondence).
            Pids and images never move.

    Attributes:
        image_paths, captions, labels: One value per record (captions after noise).
        clean: Ground-truth flag per record, ``idx[i] == i`` (all True without noise);
            for logging only.
    """

    def __init__(self, entries: list[PedesEntry], caption_noise: CaptionNoise | None = None) -> None:
        pids = sorted({e.pid for e in entries})
        remap = {p: i for i, p in enumerate(pids)}
        self.image_paths = [e.image for e in entries for _ in e.captions]
        self.captions = [c for e in entries for c in e.captions]
        self.labels = [remap[e.pid] for e in entries for _ in e.captions]
        n = len(self.captions)
        self.clean = np.ones(n, dtype=bool)
        if caption_noise is not None:
            idx = np.asarray(caption_noise(n), dtype=np.int64)
            if idx.shape != (n,) or not np.array_equal(np.sort(idx), np.arange(n)):
                raise ValueError(f"caption_noise must return a permutation of range({n}), got shape {idx.shape}")
            self.captions = [self.captions[j] for j in idx.tolist()]
            self.clean = idx == np.arange(n)
        self.num_identities = len(pids)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.image_paths[i], "text": self.captions[i], "label": self.labels[i], "index": i}


class PedesDataModule(RetrievalDataModule):
    """CUHK-PEDES / ICFG-PEDES / RSTPReid (and anything written in their layout).

    Args:
        root: Dataset folder holding the annotation JSON and ``imgs/``.
        flavour: Which dataset layout to read.
        caption_noise: Optional noisy-correspondence generator for the training split only
            (e.g. ``mmembed.methods.rde.noise.CaptionShuffle``); val and test stay clean.
        **kwargs: See :class:`~mmembed.data.base.RetrievalDataModule` (``batch_size``,
            ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``val_split``, ``predict_split``, ``processor``).
    """

    def __init__(
        self,
        root: str,
        flavour: Flavour = "CUHK-PEDES",
        caption_noise: CaptionNoise | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.flavour = flavour
        self.caption_noise = caption_noise
        self._entries: list[PedesEntry] | None = None

    @property
    def entries(self) -> list[PedesEntry]:
        if self._entries is None:
            self._entries = load_pedes_annotations(self.root, self.flavour)
        return self._entries

    def split_entries(self, split: Split) -> list[PedesEntry]:
        """Entries of one split; ICFG-PEDES has no val split, so its test doubles as val."""
        chosen = [e for e in self.entries if e.split == split]
        if not chosen and split == "val":
            chosen = [e for e in self.entries if e.split == "test"]
        if not chosen:
            raise ValueError(f"{self.root}: no entries with split {split!r}")
        return chosen

    def build_train_dataset(self) -> PedesPairs:
        return PedesPairs(self.split_entries("train"), self.caption_noise)

    def build_eval_datasets(self, split: Split) -> tuple[CaptionQueries, ImageGallery]:
        entries = self.split_entries(split)
        texts = [c for e in entries for c in e.captions]
        text_labels = [e.pid for e in entries for _ in e.captions]
        return CaptionQueries(texts, text_labels), ImageGallery([e.image for e in entries], [e.pid for e in entries])
