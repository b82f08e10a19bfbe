"""Datamodules for zero-shot composed image retrieval (CIR): benchmark evaluation, plus the text-only
training data of LinCIR (captions) and RTD (text triplets).

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
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from mmembed.data.base import RetrievalDataModule
from mmembed.data.cir import (
    CIRSplit,
    read_circo,
    read_cirr,
    read_fashioniq,
    read_genecis,
)
from mmembed.data.errors import DatasetFormatError
from mmembed.types import Processor

__all__ = ["CIRDataModule", "CaptionDataModule", "TripletDataModule", "read_captions"]

Benchmark = Literal["cirr", "fashioniq", "circo", "genecis"]
PROMPT = "a photo of $ that {}"  # the same string as mmembed.eval.cir.PROMPT (kept import-light here)


class CIRGallery(Dataset):
    """A query set's gallery images. Shapes: item image (3, H, W), index."""

    def __init__(self, name: str, split: CIRSplit, processor: Processor) -> None:
        self.name, self.split, self.transform = name, split, processor.eval_image_transform
        self.image_paths = [str(p) for p in split.gallery_paths]

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        with Image.open(self.image_paths[i]) as img:
            return {"image": self.transform(img.convert("RGB")), "index": i}


class CIRQueries(Dataset):
    """A query set's composed queries, tokenised; ``gallery`` is the set's :class:`CIRGallery`.

    FashionIQ queries carry both caption orders (``text`` and ``text2``); the others one prompt.

    Shapes:
        item: text (L,) [and text2 (L,)], reference (gallery position), index.
    """

    def __init__(self, name: str, split: CIRSplit, protocol: Benchmark, processor: Processor,
                 prompt: str = PROMPT, gallery: CIRGallery | None = None) -> None:
        from mmembed.eval.cir import composed_prompt, fashioniq_prompts

        self.name, self.split, self.protocol, self.tokenizer = name, split, protocol, processor.tokenizer
        self.gallery = gallery if gallery is not None else CIRGallery(name, split, processor)
        if protocol == "fashioniq":
            self.prompts = [list(fashioniq_prompts(*q.texts, template=prompt)) for q in split.queries]
        else:
            self.prompts = [[composed_prompt(q.texts[0], prompt)] for q in split.queries]
        self.texts = [" / ".join(q.texts) for q in split.queries]  # shown in pictures

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.tokenizer(self.prompts[i])  # (1 or 2, L)
        item = {"text": ids[0], "reference": self.split.queries[i].reference, "index": i}
        if len(ids) > 1:
            item["text2"] = ids[1]
        return item


class CIRDataModule(RetrievalDataModule):
    """Zero-shot CIR evaluation on one benchmark (no training data: see the subclasses).

    Args:
        benchmark: ``cirr`` (also SynthCIR), ``fashioniq``, ``circo`` or ``genecis``.
        root: The benchmark's folder (GeneCIS: the folder of task files ``{task}.json``).
        val_subset: The benchmark split validation runs on (CIRR ``val``; FashionIQ ``val``).
        test_subset: The split ``test`` runs on (CIRR ``test1``, CIRCO ``test``: hidden targets,
            so the module writes submission files instead of metrics).
        categories: FashionIQ categories, or GeneCIS task files (without ``.json``).
        image_root: GeneCIS only: the COCO val2017 image folder.
        prompt: Composed-query prompt (``$`` = pseudo word, ``{}`` = modification text).
        batch_size, eval_batch_size, num_workers, pin_memory, processor: See
            :class:`~mmembed.data.base.RetrievalDataModule`.
    """

    def __init__(
        self,
        benchmark: Benchmark = "cirr",
        root: str | None = None,
        val_subset: str = "val",
        test_subset: str = "test1",
        categories: Sequence[str] = ("dress", "shirt", "toptee"),
        image_root: str | None = None,
        prompt: str = PROMPT,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        processor: Processor | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, "val", "test", processor)
        if benchmark not in ("cirr", "fashioniq", "circo", "genecis"):
            raise ValueError(f"benchmark must be cirr, fashioniq, circo or genecis, got {benchmark!r}")
        if "$" not in prompt or "{}" not in prompt:
            raise ValueError(f"prompt needs a '$' (pseudo word) and '{{}}' (modification text), got {prompt!r}")
        self.benchmark, self.root, self.prompt = benchmark, root, prompt
        self.subsets = {"val": val_subset, "test": test_subset}
        self.categories, self.image_root = tuple(categories), image_root
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
                if self.image_root is None:
                    raise ValueError("GeneCIS needs data.init_args.image_root (the COCO val2017 image folder)")
                sets = [(f"genecis_{t}", read_genecis(root / f"{t}.json", self.image_root)) for t in self.categories]
            self._query_sets[stage] = sets
        return self._query_sets[stage]

    def _cir_loaders(self, stage: Literal["val", "test"]) -> list[DataLoader]:
        processor = self.require_processor()
        loaders = []
        for name, split in self.query_sets(stage):
            gallery = CIRGallery(name, split, processor)
            queries = CIRQueries(name, split, self.benchmark, processor, self.prompt, gallery)
            loaders += [self._loader(gallery, train=False), self._loader(queries, train=False)]
        return loaders

    def build_train_dataset(self) -> Dataset:
        raise ValueError(f"{type(self).__name__} has no training data (evaluation only); train with "
                         "CaptionDataModule (LinCIR) or TripletDataModule (RTD)")

    def val_dataloader(self) -> list[DataLoader]:
        return self._cir_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._cir_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        raise NotImplementedError("predict is not defined for composed retrieval; use test (metrics or submission files)")


# ---------------------------------------------------------------------------- captions (LinCIR)
def read_captions(spec: str, text_col: str = "caption", exclude_held_out: bool = True) -> list[str]:
    """Captions from comma-separated files.

    Formats: ``.txt`` (one caption per line); ``.json`` (a list of strings, a list of objects with
    ``text_col``, or SynthCIR's ``synth_captions.json`` mapping image -> ``{caption, held_out}``);
    ``.jsonl`` (objects with ``text_col``); ``.csv`` / ``.tsv`` (a header with ``text_col``).

    Args:
        spec: Comma-separated files.
        text_col: Key / column of the caption.
        exclude_held_out: Skip SynthCIR entries marked ``held_out`` (test-only combinations).

    Returns:
        Non-empty, stripped captions in file order.
    """
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part)
        if not path.is_file():
            raise FileNotFoundError(f"caption file {path} does not exist")
        if path.suffix == ".txt":
            rows: list[Any] = path.read_text(encoding="utf-8").splitlines()
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # SynthCIR: name -> {caption, held_out}
                rows = [v for v in data.values() if not (exclude_held_out and isinstance(v, dict) and v.get("held_out"))]
            else:
                rows = list(data)
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
                out.append(text.strip())
    if not out:
        raise DatasetFormatError(f"no captions in {spec}")
    return out


class _MaskedCaptions(Dataset):
    """LinCIR items: the caption and its keyword-masked copy (``$`` = the pseudo word).

    Shapes:
        item: text (L,), masked (L,), index.
    """

    def __init__(self, captions: list[str], processor: Processor, tagger: str, seed: int) -> None:
        self.captions, self.tokenizer, self.tagger, self.seed = captions, processor.tokenizer, tagger, seed

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from mmembed.methods.lincir.keywords import FALLBACK, mask_keywords
        from mmembed.nn.encoders.open_clip import PSEUDO_TOKEN_ID

        caption = self.captions[i]
        ids = self.tokenizer([caption, mask_keywords(caption, random.Random(self.seed * 1_000_003 + i), self.tagger)])
        if not bool((ids[1] == PSEUDO_TOKEN_ID).any()):  # every $ fell past the context length
            ids[1] = self.tokenizer([FALLBACK])[0]
        return {"text": ids[0], "masked": ids[1], "index": i}


class CaptionDataModule(CIRDataModule):
    """LinCIR's language-only training data (captions, keyword-masked) plus CIR evaluation.

    Args:
        captions: Caption files (see :func:`read_captions`).
        text_col: Key / column of the caption.
        exclude_held_out: Skip SynthCIR's held-out combinations.
        tagger: Keyword tagger, ``rules`` (default, no model) or ``spacy`` (if installed).
        seed: Seed of the random-word fallback (per caption, so workers agree).
        benchmark, root, val_subset, test_subset, categories, image_root, prompt, batch_size,
        eval_batch_size, num_workers, pin_memory, processor: See :class:`CIRDataModule`.

    Shapes:
        train batch: text (B, L), masked (B, L), index (B,).
    """

    def __init__(
        self,
        captions: str,
        text_col: str = "caption",
        exclude_held_out: bool = True,
        tagger: Literal["rules", "spacy"] = "rules",
        seed: int = 0,
        benchmark: Benchmark = "cirr",
        root: str | None = None,
        val_subset: str = "val",
        test_subset: str = "test1",
        categories: Sequence[str] = ("dress", "shirt", "toptee"),
        image_root: str | None = None,
        prompt: str = PROMPT,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        processor: Processor | None = None,
    ) -> None:
        super().__init__(benchmark, root, val_subset, test_subset, categories, image_root, prompt, batch_size,
                         eval_batch_size, num_workers, pin_memory, processor)
        self.caption_files, self.text_col, self.exclude_held_out = captions, text_col, exclude_held_out
        self.tagger, self.seed = tagger, seed

    def build_train_dataset(self) -> Dataset:
        captions = read_captions(self.caption_files, self.text_col, self.exclude_held_out)
        return _MaskedCaptions(captions, self.require_processor(), self.tagger, self.seed)


# ---------------------------------------------------------------------------- triplets (RTD)
class _Triplets(Dataset):
    """RTD items: the three strings of a triplet (the module tokenises; the batch is lists of strings)."""

    def __init__(self, triplets: list) -> None:
        self.triplets = triplets

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = self.triplets[i]
        return {"reference": t.reference, "conditioning": t.conditioning, "target": t.target, "index": i}


def _vocabulary(spec: str | None) -> Any:
    if spec is None:
        return None
    if spec == "synth_cir":
        from mmembed.data.synthetic.cir import TRIPLET_VOCABULARY

        return TRIPLET_VOCABULARY
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary {spec!r} is neither 'synth_cir' nor a JSON file "
                                "({kind: [[values...], [templates with {old}/{new}...]]})")
    return {k: (tuple(v[0]), tuple(v[1])) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


class TripletDataModule(CIRDataModule):
    """RTD's text triplets plus CIR evaluation.

    Triplets come from ``triplets`` (the official JSON / JSONL format) and/or are generated from
    ``captions`` by the rule-based attribute swap (:func:`mmembed.methods.rtd.triplets.rule_triplets`).

    Args:
        triplets: Triplet files (comma-separated), or None.
        captions: Caption files for rule-based triplets (see :func:`read_captions`), or None.
        text_col: Key / column of the caption.
        exclude_held_out: Skip SynthCIR's held-out combinations as references *and* as targets.
        vocabulary: Rule vocabulary: None (generic), ``synth_cir``, or a JSON file
            ``{kind: [[values], [templates]]}``.
        per_caption: Rule triplets drawn per caption.
        seed: Seed of the rule draws.
        benchmark, root, val_subset, test_subset, categories, image_root, prompt, batch_size,
        eval_batch_size, num_workers, pin_memory, processor: See :class:`CIRDataModule`.

    Shapes:
        train batch: reference, conditioning, target (lists of B strings), index (B,).
    """

    def __init__(
        self,
        triplets: str | None = None,
        captions: str | None = None,
        text_col: str = "caption",
        exclude_held_out: bool = True,
        vocabulary: str | None = None,
        per_caption: int = 4,
        seed: int = 0,
        benchmark: Benchmark = "cirr",
        root: str | None = None,
        val_subset: str = "val",
        test_subset: str = "test1",
        categories: Sequence[str] = ("dress", "shirt", "toptee"),
        image_root: str | None = None,
        prompt: str = PROMPT,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        processor: Processor | None = None,
    ) -> None:
        super().__init__(benchmark, root, val_subset, test_subset, categories, image_root, prompt, batch_size,
                         eval_batch_size, num_workers, pin_memory, processor)
        if triplets is None and captions is None:
            raise ValueError("give data.init_args.triplets (official JSON) or captions (rule-based triplets)")
        self.triplet_files, self.caption_files, self.text_col = triplets, captions, text_col
        self.exclude_held_out, self.vocabulary, self.per_caption, self.seed = (
            exclude_held_out, vocabulary, per_caption, seed)

    def triplets(self) -> list:
        """Every training triplet (files first, then rule-based ones)."""
        from mmembed.methods.rtd.triplets import (
            clean_caption,
            load_triplets,
            rule_triplets,
        )

        out = []
        for part in (p.strip() for p in (self.triplet_files or "").split(",") if p.strip()):
            out += load_triplets(part)
        if self.caption_files is not None:
            captions = read_captions(self.caption_files, self.text_col, self.exclude_held_out)
            generated = rule_triplets(captions, _vocabulary(self.vocabulary), self.per_caption, self.seed)
            if self.exclude_held_out:  # a swap must not land on a held-out combination either
                held = {clean_caption(c) for c in self._held_out_captions()}
                generated = [t for t in generated if t.target not in held]
            out += generated
        if not out:
            raise DatasetFormatError("no triplets: the files are empty or no caption has a vocabulary word")
        return out

    def _held_out_captions(self) -> list[str]:
        held: list[str] = []
        for part in (p.strip() for p in (self.caption_files or "").split(",") if p.strip()):
            if part.endswith(".json"):
                data = json.loads(Path(part).read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    held += [v["caption"] for v in data.values() if isinstance(v, dict) and v.get("held_out")]
        return held

    def build_train_dataset(self) -> Dataset:
        return _Triplets(self.triplets())

    def _loader(self, dataset: Dataset, train: bool, collate_fn: Any = None) -> DataLoader:
        # training batches keep the strings as lists (the module tokenises)
        return super()._loader(dataset, train, _collate_strings if train else collate_fn)


def _collate_strings(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: (torch.tensor([it[key] for it in items]) if key == "index" else [it[key] for it in items])
            for key in items[0]}
