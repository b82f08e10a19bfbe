"""Shared types: batch layouts, encoder outputs and the model-owned processor.

Shape letters used throughout mmembed:

* ``B`` local batch, ``G`` world size, ``N`` candidates / gallery, ``Q`` queries,
* ``L`` tokens, ``D`` embedding width, ``V`` vocabulary, ``K`` top-k,
* ``C, H, W`` image channels, height and width.

Batches are plain dicts so that the default collate function works:

* a training pair batch has ``image`` (B, C, H, W), ``text`` (B, L) token ids,
  ``label`` (B,) identity and ``index`` (B,) position in the dataset;
* a query batch has ``text``, ``label`` and ``index``;
* a gallery batch has ``image``, ``label`` and ``index``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from torch import Tensor

PSEUDO_TOKEN_ID = 259  # CLIP BPE id of a stand-alone "$" ("$</w>"): the pseudo-word slot of composed queries


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


@dataclass
class Processor:
    """Model-owned input processing, linked from the model into the datamodule.

    Attributes:
        train_image_transform: PIL image -> (C, H, W) tensor, with augmentation.
        eval_image_transform: PIL image -> (C, H, W) tensor, deterministic.
        tokenizer: list of strings -> (n, L) LongTensor of token ids.
        extras: Anything else a method needs on the data side (e.g. mask token id).
    """

    train_image_transform: Callable[[Any], Tensor]
    eval_image_transform: Callable[[Any], Tensor]
    tokenizer: Callable[[list[str]], Tensor]
    extras: dict[str, Any] | None = None
