"""Small shared callbacks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

_SIDES = ("queries", "gallery")


class EmbeddingWriter(BasePredictionWriter):
    """Write ``predict`` outputs to disk: ``queries.pt`` and ``gallery.pt``.

    Each file holds ``{"index", "embedding", "label"}`` sorted by index. Under
    several processes every rank writes ``<side>_rank<r>.pt`` with its shard.

    Args:
        output_dir: Target folder; defaults to ``<log_dir>/predictions``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        out = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")
        out.mkdir(parents=True, exist_ok=True)
        per_loader = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        for side, outputs in zip(_SIDES, per_loader, strict=False):
            if not outputs:
                continue
            merged = {k: torch.cat([o[k].detach().cpu() for o in outputs]) for k in ("index", "embedding", "label")}
            order = torch.argsort(merged["index"])
            torch.save({k: v[order] for k, v in merged.items()}, out / f"{side}{suffix}.pt")
        if trainer.is_global_zero:
            print(f"embeddings written to {out}")
