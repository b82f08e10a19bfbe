"""RTD's training data: text triplets from the official JSON format and/or the rule-based generator,
plus the CIR benchmark that validates the tuned encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmembed.data.cir_datamodule import CIRDataModule, read_caption_records
from mmembed.data.errors import DatasetFormatError
from mmembed.methods.rtd.triplets import (
    TextTriplet,
    clean_caption,
    load_triplets,
    rule_triplets,
)

__all__ = ["TripletDataModule"]


class _Triplets(Dataset):
    """RTD items: the three strings of a triplet (not tokenised at collate: the batch holds lists of
    strings, from which the module builds its refined prompts)."""

    def __init__(self, triplets: list[TextTriplet]) -> None:
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
        captions: Caption files for rule-based triplets (see :func:`~mmembed.data.cir_datamodule.read_caption_records`), or None.
        text_col: Key / column of the caption.
        exclude_held_out: Skip SynthCIR's held-out combinations as references *and* as targets.
        vocabulary: Rule vocabulary: None (generic), ``synth_cir``, or a JSON file
            ``{kind: [[values], [templates]]}``.
        per_caption: Rule triplets drawn per caption.
        seed: Seed of the rule draws.
        **kwargs: Benchmark and loader options of :class:`~mmembed.data.cir_datamodule.CIRDataModule`.

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if triplets is None and captions is None:
            raise ValueError("give data.init_args.triplets (official JSON) or captions (rule-based triplets)")
        self.triplet_files, self.caption_files, self.text_col = triplets, captions, text_col
        self.exclude_held_out, self.vocabulary, self.per_caption, self.seed = (
            exclude_held_out, vocabulary, per_caption, seed)

    def triplets(self) -> list[TextTriplet]:
        """Every training triplet (files first, then rule-based ones)."""
        out: list[TextTriplet] = []
        for part in (p.strip() for p in (self.triplet_files or "").split(",") if p.strip()):
            out += load_triplets(part)
        if self.caption_files is not None:
            records = read_caption_records(self.caption_files, self.text_col)
            exclude = self.exclude_held_out
            captions = [text for text, held in records if not (exclude and held)]
            generated = rule_triplets(captions, _vocabulary(self.vocabulary), self.per_caption, self.seed)
            if exclude:  # a swap must not land on a held-out combination either
                held_out = {clean_caption(text) for text, held in records if held}
                generated = [t for t in generated if t.target not in held_out]
            out += generated
        if not out:
            raise DatasetFormatError("no triplets: the files are empty or no caption has a vocabulary word")
        return out

    def build_train_dataset(self) -> Dataset:
        return _Triplets(self.triplets())
