"""What an encoder offers: the two protocols methods program against.

:class:`Embedder` is what every encoder provides, whatever the backend (open_clip towers, an HF
vision-language model, a diffusers text encoder): embed a processed batch for a side, its width,
the processor that makes batches from raw items, and an export of its weights. Modules reach an
encoder only through these members, so a new backend fits by implementing them.

:class:`TokenEmbedder` adds what only CLIP-like towers offer: per-token features and attention,
pseudo-word tokens written into the text input, intermediate stages, a train-only mask token and
the named special token ids. Methods that need any of this (RDE's token selection, LightCLIP's
token alignment and MLM, IRRA's MLM, LinCIR and RTD) check for it with ``isinstance`` and say so.

Both are runtime-checkable ``typing.Protocol`` classes (MTEB states its encoder contract the same
way): an encoder satisfies them by having the members, with no base class to inherit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from torch import Tensor, nn

from mmembed.types import EmbeddingOutput, Processor, SpecialTokens

Side = Literal["image", "text"]

__all__ = ["Embedder", "Side", "TokenEmbedder", "require"]


@runtime_checkable
class Embedder(Protocol):
    """Every encoder: embed a processed batch for a side.

    Shapes:
        encode(batch, side) -> (B, D) embeddings, not normalised.
    """

    @property
    def embed_dim(self) -> int:
        """Width D of the joint embedding space."""
        ...

    @property
    def processor(self) -> Processor:
        """Makes batches from raw items (``processor.collate``); linked into the datamodule by the CLI."""
        ...

    def encode(self, batch: dict[str, Any], side: Side) -> Tensor:
        """Embeddings of one side of a processed batch (``batch["image"]`` or ``batch["text"]``)."""
        ...

    def export(self, directory: str | Path, stem: str = ...) -> tuple[Path, ...]:
        """Write the weights (and what rebuilds them) in the backend's own format; returns the files."""
        ...


@runtime_checkable
class TokenEmbedder(Embedder, Protocol):
    """CLIP-like dual towers with token-level access (open_clip today).

    Shapes:
        images (B, 3, H, W) -> embedding (B, D), tokens (B, 1 + P, D); ids (B, L) -> (B, D), (B, L, D).
    """

    @property
    def special_tokens(self) -> SpecialTokens:
        """The tokenizer's special ids by name (mask, pseudo word, end of text, ...)."""
        ...

    @property
    def text_width(self) -> int:
        """Width of the text token embedding (the size of a pseudo-word token)."""
        ...

    @property
    def image_size(self) -> tuple[int, int]:
        """Input (height, width)."""
        ...

    @property
    def num_prefix_tokens(self) -> int:
        """Image tokens ahead of the patch tokens (a class token: 1)."""
        ...

    @property
    def text_tower(self) -> nn.Module:
        """The text transformer, for methods that interleave its blocks with their own (LightCLIP's fusion)."""
        ...

    @property
    def tokenizer(self) -> Any:
        """list of strings -> (n, L) ids."""
        ...

    def encode_image(self, images: Tensor, return_tokens: bool = False, return_attention: bool = False,
                     return_stages: int = 0) -> EmbeddingOutput: ...

    def encode_text(self, text: Tensor, return_tokens: bool = False, return_attention: bool = False,
                    pseudo_tokens: Tensor | None = None) -> EmbeddingOutput: ...

    def add_mask_token(self) -> int:
        """Add a train-only ``<mask>`` row; returns its id (``special_tokens.mask`` from then on)."""
        ...

    def text_copy(self, trainable: bool = False) -> nn.Module:
        """A deep copy with the text side only (the image tower is not duplicated); ``trainable``
        makes its text weights trainable."""
        ...


def require(encoder: Any, protocol: type, who: str) -> Any:
    """Return ``encoder`` if it satisfies ``protocol``, else raise a readable ``TypeError``."""
    if not isinstance(encoder, protocol):
        raise TypeError(f"{who} needs an encoder with the {protocol.__name__} protocol "
                        f"(mmembed.nn.encoders.base.{protocol.__name__}), e.g. "
                        f"mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder; got {type(encoder).__name__}")
    return encoder
