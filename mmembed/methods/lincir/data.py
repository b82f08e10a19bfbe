"""LinCIR's training data: captions (any corpus) and their keyword-masked copies, plus the CIR
benchmark that validates phi.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from torch.utils.data import Dataset

from mmembed.data.cir_datamodule import CIRDataModule, read_captions
from mmembed.methods.lincir.keywords import mask_keywords

__all__ = ["CaptionDataModule", "TokenBudget"]


class TokenBudget:
    """Cut a caption to its first ``max_tokens`` BPE tokens, as the official LinCIR code does before keyword
    masking (so the ``$`` slots fall inside the text encoder's context). Captions within the budget are
    returned unchanged.

    Args:
        tokenizer: A tokenizer with ``encode(text) -> ids`` and ``decode(ids) -> text`` (open_clip's BPE).
        max_tokens: Token budget (LinCIR: 75, the context of 77 minus SOT and EOT).
    """

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
            raise TypeError(f"cutting captions to {max_tokens} tokens needs a tokenizer with encode/decode, got "
                            f"{type(tokenizer).__name__}; set data.init_args.max_tokens: null")
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, caption: str) -> str:
        ids = self.tokenizer.encode(caption)
        return caption if len(ids) <= self.max_tokens else self.tokenizer.decode(ids[: self.max_tokens]).strip()


class _MaskedCaptions(Dataset):
    """LinCIR items: the caption and its keyword-masked copy (``$`` = the pseudo word), as strings
    (the model's processor tokenises them; the module falls back to ``"a photo of $"`` where every
    ``$`` fell past the context length).

    Shapes:
        item: text, masked (strings), index.
    """

    def __init__(self, captions: list[str], tagger: str, seed: int, budget: TokenBudget | None = None) -> None:
        self.captions, self.tagger, self.seed, self.budget = captions, tagger, seed, budget

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        caption = self.captions[i]
        cut = self.budget(caption) if self.budget is not None else caption  # cut first, then mask (official order)
        masked = mask_keywords(cut, random.Random(self.seed * 1_000_003 + i), self.tagger)
        return {"text": caption, "masked": masked, "index": i}


class CaptionDataModule(CIRDataModule):
    """LinCIR's language-only training data (captions, keyword-masked) plus CIR evaluation.

    Args:
        captions: Caption files (see :func:`~mmembed.data.cir_datamodule.read_captions`).
        text_col: Key / column of the caption.
        exclude_held_out: Skip SynthCIR's held-out combinations.
        tagger: Keyword tagger, ``rules`` (default, no model) or ``spacy`` (if installed).
        seed: Seed of the random-word fallback (per caption, so workers agree).
        max_tokens: Cut each caption to this many BPE tokens before keyword masking, as the official code
            (75); None masks the whole caption.
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
        max_tokens: int | None = 75,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_tokens = max_tokens
        self.caption_files, self.text_col, self.exclude_held_out = captions, text_col, exclude_held_out
        self.tagger, self.seed = tagger, seed

    def build_train_dataset(self) -> Dataset:
        captions = read_captions(self.caption_files, self.text_col, self.exclude_held_out)
        budget = TokenBudget(self.require_processor().tokenizer, self.max_tokens) if self.max_tokens else None
        return _MaskedCaptions(captions, self.tagger, self.seed, budget)
