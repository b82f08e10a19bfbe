"""Zero-shot composed image retrieval (CIR) data: benchmark evaluation, and the caption reader of the
text-only training data (LinCIR's captions in :mod:`mmembed.methods.lincir.data`, RTD's triplets in
:mod:`mmembed.methods.rtd.data`).

Evaluation runs on one benchmark in its released layout (:mod:`mmembed.data.cir`): CIRR (and
SynthCIR), FashionIQ (one query set per category), CIRCO or GeneCIS object tasks. Every query set
gives two loaders, its gallery first (image, index) and its queries second (reference position,
the tokenised prompt(s), index); a module encodes the gallery with its frozen image encoder, then
the composed queries, and scores them with the benchmark's protocol
(:func:`mmembed.eval.cir.cir_metrics`). The loaders' datasets carry ``name``, ``split`` (the
:class:`~mmembed.data.cir.CIRSplit`) and ``protocol``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader, Dataset

from mmembed.data.base import DataModule, Records
from mmembed.data.cir import (
    PROMPT,
    CIRSplit,
    composed_prompt,
    fashioniq_prompts,
    read_circo,
    read_cirr,
    read_fashioniq,
    read_genecis,
)
from mmembed.data.errors import DatasetFormatError

__all__ = ["CIRDataModule", "CIRGallery", "CIRQueries", "read_caption_records", "read_captions"]

Benchmark = Literal["cirr", "fashioniq", "circo", "genecis"]
FashionIQOrders = Literal["both", "first"]


class CIRGallery(Records):
    """A query set's gallery images. Shapes: item image (a path; loaded at collate), index."""

    def __init__(self, name: str, split: CIRSplit) -> None:
        self.name, self.split = name, split
        self.image_paths = [p if hasattr(p, "load") else str(p) for p in split.gallery_paths]  # crops stay loadable
        super().__init__(image=self.image_paths)


class CIRQueries(Dataset):
    """A query set's composed queries (prompt strings); ``gallery`` is the set's :class:`CIRGallery`.

    FashionIQ queries carry both caption orders (``text`` and ``text2``); the others one prompt.

    Shapes:
        item: text [and text2] (strings; tokenised at collate), reference (gallery position), index.
    """

    def __init__(self, name: str, split: CIRSplit, protocol: Benchmark, prompt: str = PROMPT,
                 gallery: CIRGallery | None = None, fashioniq_orders: FashionIQOrders = "both") -> None:
        self.name, self.split, self.protocol = name, split, protocol
        self.gallery = gallery if gallery is not None else CIRGallery(name, split)
        if protocol == "fashioniq":
            keep = 2 if fashioniq_orders == "both" else 1  # "first": Pic2Word's single order
            self.prompts = [list(fashioniq_prompts(*q.texts, template=prompt))[:keep] for q in split.queries]
        else:
            self.prompts = [[composed_prompt(q.texts[0], prompt)] for q in split.queries]
        self.texts = [" / ".join(q.texts) for q in split.queries]  # shown in pictures

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        prompts = self.prompts[i]
        item = {"text": prompts[0], "reference": self.split.queries[i].reference, "index": i}
        if len(prompts) > 1:
            item["text2"] = prompts[1]
        return item


class CIRDataModule(DataModule):
    """Zero-shot CIR evaluation on one benchmark (no training data: the methods' datamodules subclass it).

    Args:
        benchmark: ``cirr`` (also SynthCIR), ``fashioniq``, ``circo`` or ``genecis``.
        root: The benchmark's folder (GeneCIS: the folder of task files ``{task}.json``).
        val_subset: The benchmark split validation runs on (CIRR ``val``; FashionIQ ``val``).
        test_subset: The split ``test`` runs on (CIRR ``test1``, CIRCO ``test``: hidden targets,
            so the module writes submission files instead of metrics).
        categories: FashionIQ categories, or GeneCIS task files (without ``.json``).
        image_root: GeneCIS only: the COCO val2017 image folder (object tasks).
        attribute_image_root: GeneCIS only: the Visual Genome image folder (attribute tasks).
        prompt: Composed-query prompt (``$`` = pseudo word, ``{}`` = modification text).
        fashioniq_orders: FashionIQ queries: ``both`` caption orders, normalised and summed (LinCIR's,
            SEARLE's and RTD's protocol), or only the ``first`` ("{c1} and {c2}", Pic2Word's protocol).
        **kwargs: Loader options of :class:`~mmembed.data.base.DataModule` (``batch_size``,
            ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``processor``).
    """

    def __init__(
        self,
        benchmark: Benchmark = "cirr",
        root: str | None = None,
        val_subset: str = "val",
        test_subset: str = "test1",
        categories: Sequence[str] = ("dress", "shirt", "toptee"),
        image_root: str | None = None,
        attribute_image_root: str | None = None,
        prompt: str = PROMPT,
        fashioniq_orders: FashionIQOrders = "both",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if fashioniq_orders not in ("both", "first"):
            raise ValueError(f"fashioniq_orders must be 'both' or 'first', got {fashioniq_orders!r}")
        self.fashioniq_orders = fashioniq_orders
        if benchmark not in ("cirr", "fashioniq", "circo", "genecis"):
            raise ValueError(f"benchmark must be cirr, fashioniq, circo or genecis, got {benchmark!r}")
        if "$" not in prompt or "{}" not in prompt:
            raise ValueError(f"prompt needs a '$' (pseudo word) and '{{}}' (modification text), got {prompt!r}")
        self.benchmark, self.root, self.prompt = benchmark, root, prompt
        self.subsets = {"val": val_subset, "test": test_subset}
        self.categories, self.image_root = tuple(categories), image_root
        self.attribute_image_root = attribute_image_root
        self._query_sets: dict[str, list[tuple[str, CIRSplit]]] = {}

    # ------------------------------------------------------------------ benchmark
    def query_sets(self, stage: Literal["val", "test"]) -> list[tuple[str, CIRSplit]]:
        """``(name, split)`` of each query set of a stage (FashionIQ / GeneCIS: one per category / task)."""
        if stage not in self._query_sets:
            if self.root is None:
                raise ValueError(f"no benchmark to evaluate on: set data.init_args.root to the {self.benchmark} folder")
            root, subset = Path(self.root), self.subsets[stage]
            if self.benchmark == "cirr":
                sets = [("cirr", read_cirr(root, subset))]
            elif self.benchmark == "circo":
                sets = [("circo", read_circo(root, subset))]
            elif self.benchmark == "fashioniq":
                sets = [(f"fashioniq_{c}", read_fashioniq(root, c, subset)) for c in self.categories]
            else:
                sets = [(f"genecis_{t}", read_genecis(root / f"{t}.json", self._genecis_images(t)))
                        for t in self.categories]
            self._query_sets[stage] = sets
        return self._query_sets[stage]

    def _genecis_images(self, task: str) -> str:
        """Visual Genome images for attribute tasks, COCO val2017 for object tasks."""
        if "attribute" in task:
            if self.attribute_image_root is None:
                raise ValueError(f"GeneCIS {task} needs data.init_args.attribute_image_root (the Visual Genome images)")
            return self.attribute_image_root
        if self.image_root is None:
            raise ValueError(f"GeneCIS {task} needs data.init_args.image_root (the COCO val2017 image folder)")
        return self.image_root

    def _cir_loaders(self, stage: Literal["val", "test"]) -> list[DataLoader]:
        loaders = []
        for name, split in self.query_sets(stage):
            gallery = CIRGallery(name, split)
            queries = CIRQueries(name, split, self.benchmark, self.prompt, gallery, self.fashioniq_orders)
            loaders += [self.loader(gallery, train=False), self.loader(queries, train=False)]
        return loaders

    def build_train_dataset(self) -> Dataset:
        raise ValueError(f"{type(self).__name__} has no training data (evaluation only); train with "
                         "mmembed.methods.lincir.data.CaptionDataModule or mmembed.methods.rtd.data.TripletDataModule")

    def val_dataloader(self) -> list[DataLoader]:
        return self._cir_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._cir_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        raise NotImplementedError("predict is not defined for composed retrieval; use test (metrics or submission files)")


# ---------------------------------------------------------------------------- captions (LinCIR)
def read_caption_records(spec: str, text_col: str = "caption") -> list[tuple[str, bool]]:
    """Captions from comma-separated files, each with its ``held_out`` flag.

    Formats: ``.txt`` (one caption per line); ``.json`` (a list of strings, a list of objects with
    ``text_col``, or SynthCIR's ``synth_captions.json`` mapping image -> ``{caption, held_out}``);
    ``.jsonl`` (objects with ``text_col``); ``.csv`` / ``.tsv`` (a header with ``text_col``). Only
    SynthCIR entries carry ``held_out`` (its test-only combinations); every other caption is False.

    Args:
        spec: Comma-separated files.
        text_col: Key / column of the caption.

    Returns:
        ``(caption, held_out)`` of every non-empty, stripped caption, in file order.
    """
    out: list[tuple[str, bool]] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part)
        if not path.is_file():
            raise FileNotFoundError(f"caption file {path} does not exist")
        if path.suffix == ".txt":
            rows: list[Any] = path.read_text(encoding="utf-8").splitlines()
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = list(data.values()) if isinstance(data, dict) else list(data)  # SynthCIR: name -> {caption, held_out}
        elif path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        elif path.suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
        else:
            raise DatasetFormatError(f"{path}: unsupported caption file (use .txt, .json, .jsonl, .csv or .tsv)")
        for i, row in enumerate(rows):
            text = row.get(text_col) if isinstance(row, dict) else row
            if not isinstance(text, str):
                raise DatasetFormatError(f"{path}: entry {i} has no string {text_col!r} (set data.init_args.text_col)")
            if text.strip():
                out.append((text.strip(), isinstance(row, dict) and bool(row.get("held_out"))))
    if not out:
        raise DatasetFormatError(f"no captions in {spec}")
    return out


def read_captions(spec: str, text_col: str = "caption", exclude_held_out: bool = True) -> list[str]:
    """Captions from comma-separated files (formats: :func:`read_caption_records`).

    Args:
        spec: Comma-separated files.
        text_col: Key / column of the caption.
        exclude_held_out: Skip SynthCIR entries marked ``held_out`` (test-only combinations).

    Returns:
        Non-empty, stripped captions in file order.
    """
    captions = [text for text, held in read_caption_records(spec, text_col) if not (exclude_held_out and held)]
    if not captions:
        raise DatasetFormatError(f"no captions in {spec} outside the held-out ones")
    return captions
