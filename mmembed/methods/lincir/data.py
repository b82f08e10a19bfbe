"""LinCIR's training data: captions (any corpus) and their keyword-masked copies, plus the CIR
benchmark that validates phi.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

from torch.utils.data import Dataset

from mmembed.data.cir import PROMPT
from mmembed.data.cir_datamodule import Benchmark, CIRDataModule, read_captions
from mmembed.methods.lincir.keywords import FALLBACK, mask_keywords
from mmembed.types import PSEUDO_TOKEN_ID, Processor

__all__ = ["CaptionDataModule"]


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
        caption = self.captions[i]
        ids = self.tokenizer([caption, mask_keywords(caption, random.Random(self.seed * 1_000_003 + i), self.tagger)])
        if not bool((ids[1] == PSEUDO_TOKEN_ID).any()):  # every $ fell past the context length
            ids[1] = self.tokenizer([FALLBACK])[0]
        return {"text": ids[0], "masked": ids[1], "index": i}


class CaptionDataModule(CIRDataModule):
    """LinCIR's language-only training data (captions, keyword-masked) plus CIR evaluation.

    Args:
        captions: Caption files (see :func:`~mmembed.data.cir_datamodule.read_captions`).
        text_col: Key / column of the caption.
        exclude_held_out: Skip SynthCIR's held-out combinations.
        tagger: Keyword tagger, ``rules`` (default, no model) or ``spacy`` (if installed).
        seed: Seed of the random-word fallback (per caption, so workers agree).
        benchmark, root, val_subset, test_subset, categories, image_root, prompt, batch_size,
        eval_batch_size, num_workers, pin_memory, processor: See :class:`~mmembed.data.cir_datamodule.CIRDataModule`.

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
