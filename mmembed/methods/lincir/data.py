"""LinCIR's training data: captions (any corpus) and their keyword-masked copies, plus the CIR
benchmark that validates phi.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from torch.utils.data import Dataset

from mmembed.data.cir_datamodule import CIRDataModule, read_captions
from mmembed.methods.lincir.keywords import mask_keywords

__all__ = ["CaptionDataModule"]


class _MaskedCaptions(Dataset):
    """LinCIR items: the caption and its keyword-masked copy (``$`` = the pseudo word), as strings
    (the model's processor tokenises them; the module falls back to ``"a photo of $"`` where every
    ``$`` fell past the context length).

    Shapes:
        item: text, masked (strings), index.
    """

    def __init__(self, captions: list[str], tagger: str, seed: int) -> None:
        self.captions, self.tagger, self.seed = captions, tagger, seed

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        caption = self.captions[i]
        masked = mask_keywords(caption, random.Random(self.seed * 1_000_003 + i), self.tagger)
        return {"text": caption, "masked": masked, "index": i}


class CaptionDataModule(CIRDataModule):
    """LinCIR's language-only training data (captions, keyword-masked) plus CIR evaluation.

    Args:
        captions: Caption files (see :func:`~mmembed.data.cir_datamodule.read_captions`).
        text_col: Key / column of the caption.
        exclude_held_out: Skip SynthCIR's held-out combinations.
        tagger: Keyword tagger, ``rules`` (default, no model) or ``spacy`` (if installed).
        seed: Seed of the random-word fallback (per caption, so workers agree).
        **kwargs: Benchmark and loader options of :class:`~mmembed.data.cir_datamodule.CIRDataModule`.

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.caption_files, self.text_col, self.exclude_held_out = captions, text_col, exclude_held_out
        self.tagger, self.seed = tagger, seed

    def build_train_dataset(self) -> Dataset:
        captions = read_captions(self.caption_files, self.text_col, self.exclude_held_out)
        return _MaskedCaptions(captions, self.tagger, self.seed)
