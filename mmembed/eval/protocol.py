"""The interface evaluation needs from a model."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class EmbeddingModel(Protocol):
    """Anything that embeds query batches and gallery batches into one space.

    Shapes:
        encode_query_batch: batch -> (B, D); encode_gallery_batch: batch -> (B, D).
    """

    def encode_query_batch(self, batch: dict[str, Any]) -> Tensor: ...

    def encode_gallery_batch(self, batch: dict[str, Any]) -> Tensor: ...
