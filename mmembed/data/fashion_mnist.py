"""Fashion-MNIST as image-caption pairs, for CLIP-style training and zero-shot evaluation.

Images come from the IDX files of the Debian package ``dataset-fashion-mnist``
(:func:`mmembed.data.idx.load_fashion_mnist`). Every image gets a caption from a small grammar:
a training template filled with one of its class's synonyms, chosen by a seeded generator per
image. Zero-shot evaluation uses :data:`ZEROSHOT_CLASSNAMES` with the held-out
:data:`ZEROSHOT_TEMPLATES`, which never appear in training captions.

Many pairs in a batch share a class, so in-batch negatives include false negatives: the "not
strictly one-to-one" case that soft labels address.

Splits: ``train`` is the first ``60000 - val_size`` training images, ``val`` the last
``val_size``, and ``test`` the 10,000 test images. Validation and test are text-to-image
retrieval with class-level positives (queries: one held-out-template caption per image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mmembed.data.base import CaptionQueries, RetrievalDataModule, Split
from mmembed.data.idx import FASHION_MNIST_ROOT, load_fashion_mnist

__all__ = ["SYNONYMS", "TRAIN_TEMPLATES", "ZEROSHOT_CLASSNAMES", "ZEROSHOT_TEMPLATES", "FashionMNISTDataModule",
           "make_captions"]

#: Words a caption may use for each class (label order); the first is the zero-shot class name.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "top", "tee"),
    ("trousers", "pants", "slacks"),
    ("pullover", "sweater", "jumper"),
    ("dress", "frock", "gown"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "open shoe", "flip-flop"),
    ("shirt", "button-up shirt", "blouse"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "short boot"),
)
ZEROSHOT_CLASSNAMES = tuple(s[0] for s in SYNONYMS)
#: Training caption templates (one ``{}`` for the class word).
TRAIN_TEMPLATES = (
    "a photo of the {}.", "a picture of the {}.", "the {} on a black background.", "a grey image of the {}.",
    "a product photo of the {}.", "a small photo of the {}.", "a low resolution photo of the {}.", "the {}.",
)
#: Held-out templates for zero-shot classification and evaluation queries.
ZEROSHOT_TEMPLATES = (
    "a black and white photo of the {}.", "an image showing the {}.", "this is the {}.", "a close-up of the {}.",
)


def make_captions(labels: np.ndarray, templates: tuple[str, ...], seed: int, salt: int = 0) -> list[str]:
    """One caption per image: a template and a synonym of its class, drawn per image.

    The draw for image ``i`` depends only on ``(seed, salt, i)``, so a subset keeps its captions.

    Args:
        labels: Class per image (0-9).
        templates: Templates to draw from.
        seed: Generation seed.
        salt: Separates caption streams (e.g. train vs evaluation queries).

    Returns:
        The captions.

    Shapes:
        labels: (N,) -> N strings.
    """
    out = []
    for i, label in enumerate(labels.tolist()):
        rng = np.random.default_rng((seed, salt, i))
        words = SYNONYMS[label]
        out.append(templates[rng.integers(len(templates))].format(words[rng.integers(len(words))]))
    return out


class _FashionPairs(Dataset):
    """Training pairs (or, with ``with_text=False``, a gallery) over grey 28x28 images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, captions: list[str] | None) -> None:
        self.images, self.labels, self.captions = images, labels, captions

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"image": Image.fromarray(self.images[i]).convert("RGB"), "label": int(self.labels[i]), "index": i}
        if self.captions is not None:
            item["text"] = self.captions[i]
        return item


class FashionMNISTDataModule(RetrievalDataModule):
    """Fashion-MNIST image-caption pairs (see the module docstring).

    Args:
        root: Folder with the four IDX files (default: where ``apt-get install
            dataset-fashion-mnist`` puts them).
        val_size: Training images held out for validation (the last ones).
        max_train: Use only the first ``max_train`` training images (None: all); for quick runs.
        max_eval: Use only the first ``max_eval`` images of val / test (None: all).
        seed: Caption seed.
        batch_size: Training batch size (Fashion-MNIST default 256).
        eval_batch_size: Evaluation batch size (default 512).
        **kwargs: Other loader and split options of :class:`~mmembed.data.base.RetrievalDataModule`.

    Shapes:
        train batch: image (B, 3, H, W), text (B, L), label (B,) class ids, index (B,).
    """

    def __init__(
        self,
        root: str = FASHION_MNIST_ROOT,
        val_size: int = 5000,
        max_train: int | None = None,
        max_eval: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, **kwargs)
        if not 0 <= val_size < 60000:
            raise ValueError(f"val_size must be in [0, 60000), got {val_size}")
        self.root, self.val_size, self.max_train, self.max_eval, self.seed = Path(root), val_size, max_train, max_eval, seed
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # read by mmembed.lit.callbacks.ZeroShotClassification
        self.classnames, self.zeroshot_templates = list(ZEROSHOT_CLASSNAMES), list(ZEROSHOT_TEMPLATES)

    def prepare_data(self) -> None:
        """Fail early, with the install hint, when the IDX files are missing."""
        self.split_arrays("test")

    def split_arrays(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of a split, loaded once. Shapes: (N, 28, 28) uint8, (N,) int64."""
        if split not in self._splits:
            if split == "test":
                images, labels = load_fashion_mnist(self.root, "test")
                cut = slice(0, self.max_eval)
            else:
                images, labels = load_fashion_mnist(self.root, "train")
                n_train = len(labels) - self.val_size
                cut = slice(0, n_train if self.max_train is None else min(self.max_train, n_train))
                if split == "val":
                    if self.val_size == 0:
                        raise ValueError("val_size is 0: there is no val split (use val_split: test)")
                    end = len(labels) if self.max_eval is None else min(len(labels), n_train + self.max_eval)
                    cut = slice(n_train, end)
            self._splits[split] = (images[cut], labels[cut])
        return self._splits[split]

    def build_train_dataset(self) -> Dataset:
        images, labels = self.split_arrays("train")
        return _FashionPairs(images, labels, make_captions(labels, TRAIN_TEMPLATES, self.seed))

    def build_eval_datasets(self, split: Split) -> tuple[Dataset, Dataset]:
        images, labels = self.split_arrays(split)
        queries = make_captions(labels, ZEROSHOT_TEMPLATES, self.seed, salt=1 if split == "val" else 2)
        return CaptionQueries(queries, labels.tolist()), _FashionPairs(images, labels, None)
