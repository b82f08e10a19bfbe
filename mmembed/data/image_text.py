"""Generic image-text pairs: webdataset tar shards, or CSV / TSV / JSONL lists (CC3M / CC12M style).

* **Shards** (``*.tar``): members are grouped by key, the path up to the first dot of the file
  name (the webdataset convention: ``000123.jpg`` + ``000123.txt``). Each sample needs one image
  member (``jpg``, ``jpeg``, ``png`` or ``webp``) and one text member (``txt``). Shards are
  indexed once (member offsets); samples are then read by offset, so the dataset is map-style
  (shuffling, DDP samplers and worker processes work as for any dataset).
* **Lists**: a ``.csv`` / ``.tsv`` file with a header, or ``.jsonl`` with one object per line,
  naming an image file (relative to ``image_root`` or the list's folder) and a caption.

Evaluation: every caption is a query and every distinct image a gallery item; a caption's
positive is its own image (several captions may share one).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from mmembed.data.base import CaptionQueries, ImageGallery, Records, RetrievalDataModule, Split
from mmembed.data.errors import DatasetFormatError, describe_offenders

__all__ = ["ImageRef", "ImageTextDataModule", "read_image_text"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes are: a file, or ``size`` bytes at ``offset`` inside a tar shard."""

    path: str
    offset: int = -1
    size: int = -1

    def load(self) -> Image.Image:
        """Decode the image as RGB."""
        if self.offset < 0:
            with Image.open(self.path) as img:
                return img.convert("RGB")
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")


def _expand(spec: str) -> list[Path]:
    """Comma-separated paths or globs -> sorted existing files (a clear error when none match)."""
    files: list[Path] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        matches = sorted(glob.glob(part))
        if not matches:
            raise DatasetFormatError(f"{part}: no such file (or the pattern matched nothing)")
        files += [Path(m) for m in matches]
    if not files:
        raise DatasetFormatError(f"no data files given ({spec!r})")
    return files


def _read_shard(shard: Path, text_ext: str) -> list[tuple[ImageRef, str]]:
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:  # plain tar: offsets are byte positions in the file
            for m in tar:
                if not m.isfile():
                    continue
                folder, _, name = m.name.rpartition("/")
                key, dot, ext = name.partition(".")
                if dot:
                    groups.setdefault(f"{folder}/{key}", {})[ext.lower()] = m
            samples, broken = [], []
            for key, members in groups.items():
                image = next((members[e] for e in IMAGE_EXTS if e in members), None)
                text = members.get(text_ext)
                if image is None or text is None:
                    broken.append(f"{key} has {sorted(members)}")
                    continue
                caption = tar.extractfile(text).read().decode("utf-8").strip()  # type: ignore[union-attr]
                samples.append((ImageRef(str(shard), image.offset_data, image.size), caption))
    except tarfile.ReadError as err:
        raise DatasetFormatError(f"{shard}: not a readable uncompressed tar file ({err})") from err
    if broken:
        raise DatasetFormatError(describe_offenders(
            shard, f"samples without both an image ({'/'.join(IMAGE_EXTS)}) and a .{text_ext} member", broken))
    return samples


def _read_list(path: Path, image_col: str, text_col: str, image_root: str | None) -> list[tuple[ImageRef, str]]:
    root = Path(image_root) if image_root else path.parent
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    if not rows:
        raise DatasetFormatError(f"{path}: no rows")
    missing_cols = [c for c in (image_col, text_col) if c not in rows[0]]
    if missing_cols:
        raise DatasetFormatError(
            f"{path}: no column {missing_cols} (columns: {sorted(rows[0])}); set image_col / text_col")
    samples = [(ImageRef(str(root / str(r[image_col]))), str(r[text_col]).strip()) for r in rows]
    missing = [s[0].path for s in samples if not Path(s[0].path).is_file()]
    if missing:
        raise DatasetFormatError(describe_offenders(path, "rows whose image file does not exist", missing))
    return samples


def read_image_text(
    spec: str, image_col: str = "filepath", text_col: str = "caption", image_root: str | None = None,
    text_ext: str = "txt",
) -> list[tuple[ImageRef, str]]:
    """Read (image, caption) samples from tar shards and/or CSV / TSV / JSONL lists.

    Args:
        spec: Comma-separated files or globs (``data/shards/{000..099}.tar`` style brace
            ranges are not expanded; use ``data/shards/*.tar``).
        image_col, text_col: List columns (keys) of the image path and the caption.
        image_root: Folder that list image paths are relative to (default: the list's folder).
        text_ext: Extension of the caption member in shards.

    Returns:
        Samples in file order, then member / row order.
    """
    samples: list[tuple[ImageRef, str]] = []
    for path in _expand(spec):
        if path.suffix == ".tar":
            samples += _read_shard(path, text_ext)
        elif path.suffix in (".csv", ".tsv", ".jsonl"):
            samples += _read_list(path, image_col, text_col, image_root)
        else:
            raise DatasetFormatError(f"{path}: unsupported file type (use .tar shards or .csv/.tsv/.jsonl lists)")
    empty = [f"{ref.path}@{ref.offset}" for ref, text in samples if not text]
    if empty:
        raise DatasetFormatError(describe_offenders(spec, "samples with an empty caption", empty))
    return samples


def _image_ids(samples: list[tuple[ImageRef, str]]) -> tuple[list[int], list[ImageRef]]:
    """Label each sample by its distinct image (first-seen order). -> labels, distinct images."""
    ids: dict[ImageRef, int] = {}
    labels = [ids.setdefault(ref, len(ids)) for ref, _ in samples]
    return labels, list(ids)


class ImageTextDataModule(RetrievalDataModule):
    """Image-text pairs from webdataset shards or CSV / TSV / JSONL lists (see the module docstring).

    Args:
        train: Training files (comma-separated paths or globs).
        val: Validation files, or None (then ``val_split`` must not be used).
        test: Test files, or None.
        image_col, text_col: List columns of the image path and the caption.
        image_root: Folder that list image paths are relative to (default: each list's folder).
        text_ext: Caption member extension in shards.
        batch_size: Training batch size (default 256).
        eval_batch_size: Evaluation batch size (default 512).
        **kwargs: Other loader and split options of :class:`~mmembed.data.base.RetrievalDataModule`.

    Shapes:
        train batch: image (B, 3, H, W), text (B, L), label (B,) distinct-image ids, index (B,).
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        test: str | None = None,
        image_col: str = "filepath",
        text_col: str = "caption",
        image_root: str | None = None,
        text_ext: str = "txt",
        batch_size: int = 256,
        eval_batch_size: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, **kwargs)
        self.files = {"train": train, "val": val, "test": test}
        self.read_args = {"image_col": image_col, "text_col": text_col, "image_root": image_root, "text_ext": text_ext}
        self._samples: dict[str, list[tuple[ImageRef, str]]] = {}

    def samples(self, split: Split) -> list[tuple[ImageRef, str]]:
        """The split's (image, caption) samples, read once."""
        if split not in self._samples:
            spec = self.files[split]
            if spec is None:
                raise ValueError(f"no {split} files: set data.init_args.{split}")
            self._samples[split] = read_image_text(spec, **self.read_args)
        return self._samples[split]

    def build_train_dataset(self) -> Dataset:
        samples = self.samples("train")
        labels, _ = _image_ids(samples)
        return Records(image=[ref for ref, _ in samples], text=[t for _, t in samples], label=labels)

    def build_eval_datasets(self, split: Split) -> tuple[Dataset, Dataset]:
        samples = self.samples(split)
        labels, images = _image_ids(samples)
        return CaptionQueries([t for _, t in samples], labels), ImageGallery(images, list(range(len(images))))
