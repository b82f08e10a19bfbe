"""Shared types: raw items, batch layouts, encoder outputs, named token ids and the model-owned processor.

Shape letters used throughout mmembed:

* ``B`` local batch, ``G`` world size, ``N`` candidates / gallery, ``Q`` queries,
* ``L`` tokens, ``D`` embedding width, ``V`` vocabulary, ``K`` top-k,
* ``C, H, W`` image channels, height and width.

Datasets yield raw items (plain dicts); the model's :class:`Processor` turns a list of items into a
batch (:meth:`Processor.collate`): images are loaded and transformed, texts tokenised and padded
in one call per batch, numbers become tensors and anything else stays a list. So

* a training pair item ``{"image": path or PIL image, "text": str, "label": int, "index": int}``
  becomes ``image`` (B, C, H, W), ``text`` (B, L) token ids, ``label`` (B,) and ``index`` (B,);
* a query item has ``text``, ``label`` and ``index``; a gallery item ``image``, ``label`` and ``index``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import Tensor


class PairBatch(TypedDict):
    """A batch of matched image-text training pairs."""

    image: Tensor
    text: Tensor
    label: Tensor
    index: Tensor


class QueryBatch(TypedDict):
    """A batch of text queries."""

    text: Tensor
    label: Tensor
    index: Tensor


class GalleryBatch(TypedDict):
    """A batch of gallery images."""

    image: Tensor
    label: Tensor
    index: Tensor


@dataclass
class EmbeddingOutput:
    """What an encoder returns for one modality.

    Attributes:
        embedding: Global embedding in the joint space, not normalised.
        tokens: Per-token features projected into the joint space (every visual
            patch token including CLS, or every text position), if requested.
        mask: True where a token is real (text: up to and including EOT), if
            tokens were requested.
        attention: Head-averaged attention weights of the last block, if requested.
        stages: Token features of the tower's last stages (blocks of a ViT, stages of a
            CNN), shallow to deep, from the same forward pass, if requested.

    Shapes:
        embedding: (B, D); tokens: (B, L, D); mask: (B, L); attention: (B, L, L);
        stages: list of (B, N_k, C_k).
    """

    embedding: Tensor
    tokens: Tensor | None = None
    mask: Tensor | None = None
    attention: Tensor | None = None
    stages: list[Tensor] | None = None


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids a method may need, by name. Only the encoder that owns the tokenizer knows the
    numbers (``encoder.special_tokens``); shared code never spells them.

    Attributes:
        pad: Padding id.
        sot: Start-of-text id (None if the tokenizer has none).
        eot: End-of-text id.
        mask: Id written for a masked word (MLM, caption augmentation).
        pseudo: Placeholder id of a pseudo-word token (composed retrieval), or None.
        first_special: Ids at or above this are never words (special and added tokens).
        vocab_size: Rows of the text token embedding (the MLM prediction targets).
    """

    pad: int
    sot: int | None
    eot: int
    mask: int | None
    pseudo: int | None
    first_special: int
    vocab_size: int

    @property
    def max_word_id(self) -> int:
        """The largest id of a word (random replacements are drawn from ``[1, max_word_id]``)."""
        return self.first_special - 1


def load_image(source: Any) -> Any:
    """A PIL RGB image from a path, a PIL image, or an object with ``load()`` (e.g. a shard member)."""
    if isinstance(source, str | Path):
        from PIL import Image

        with Image.open(source) as img:
            return img.convert("RGB")
    if not hasattr(source, "convert") and hasattr(source, "load"):  # a reference, not a PIL image
        source = source.load()
    return source.convert("RGB") if getattr(source, "mode", "RGB") != "RGB" else source


@dataclass
class Processor:
    """Model-owned input processing, linked from the model into the datamodule.

    Datasets yield raw items; :meth:`collate` makes the batch, so the model decides how images are
    transformed and texts tokenised (one tokenizer call per batch, as HF processors work). A backend
    with other needs (an HF VLM processor interleaving images and text) subclasses it and overrides
    :meth:`collate`.

    Attributes:
        train_image_transform: PIL image -> (C, H, W) tensor, with augmentation.
        eval_image_transform: PIL image -> (C, H, W) tensor, deterministic.
        tokenizer: list of strings -> (n, L) LongTensor of token ids.
        extras: Anything else a method needs on the data side.
        image_keys: Item keys holding images (paths, PIL images or ``load()``-able references).
        text_keys: Item keys holding strings to tokenise. Other strings stay lists of strings.
        special_tokens: The tokenizer's special ids by name (what the encoder's ``special_tokens`` gives).
    """

    train_image_transform: Callable[[Any], Tensor]
    eval_image_transform: Callable[[Any], Tensor]
    tokenizer: Callable[[list[str]], Tensor]
    extras: dict[str, Any] | None = None
    image_keys: tuple[str, ...] = ("image",)
    text_keys: tuple[str, ...] = ("text", "text2", "masked")
    special_tokens: SpecialTokens | None = field(default=None, repr=False)

    def collate(self, items: Sequence[dict[str, Any]], train: bool = False) -> dict[str, Any]:
        """Turn raw items into a batch.

        Args:
            items: Dicts with the same keys.
            train: Use the training image transform (augmentation) instead of the eval one.

        Returns:
            The batch: images stacked (B, C, H, W), texts tokenised (B, L), the other keys as
            ``torch.utils.data.default_collate`` makes them (numbers, numpy values and tensors
            stacked, strings as lists).

        Raises:
            ValueError: If the items' keys differ or a value is None.
        """
        if not items:
            raise ValueError("cannot collate an empty list of items")
        from torch.utils.data import default_collate

        keys = list(items[0])
        for n, item in enumerate(items):
            if list(item) != keys:
                raise ValueError(f"item {n} has keys {sorted(item)}, the first item {sorted(keys)}: a dataset's items "
                                 "must share their keys")
        transform = self.train_image_transform if train else self.eval_image_transform
        batch: dict[str, Any] = {}
        for key in keys:
            values = [item[key] for item in items]
            missing = [n for n, v in enumerate(values) if v is None]
            if missing:
                raise ValueError(f"items {missing[:5]} have no value (None) for {key!r}")
            if key in self.image_keys:
                batch[key] = torch.stack([v if isinstance(v, Tensor) else transform(load_image(v)) for v in values])
            elif key in self.text_keys and isinstance(values[0], str):
                batch[key] = self.tokenizer(values)  # (B, L)
            else:
                batch[key] = default_collate(values)  # numbers and arrays -> tensors, strings -> lists
        return batch

    def train_collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """:meth:`collate` with the training transform (picklable for DataLoader workers)."""
        return self.collate(items, train=True)

    def eval_collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """:meth:`collate` with the eval transform."""
        return self.collate(items, train=False)
