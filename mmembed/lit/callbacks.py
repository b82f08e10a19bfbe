"""Shared callbacks: prediction writer, ranked-result pictures, artifact export, zero-shot classification.

Each one works with any module that offers the hook it names (``ranked_examples``, ``export``),
whatever the method.
"""

from __future__ import annotations

import contextlib
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


class RankedResults(pl.Callback):
    """After ``test``, draw ranked retrieval results: ``ranked_test.png`` (or ``ranked_test_<set>.png``
    per query set) in the run folder, correct items framed in green.

    The module supplies the rows through ``ranked_examples(stage, num_queries, top_k)`` (a list of
    ``(name, RankedExamples)``); every rank calls it, since it may gather.

    Args:
        num_queries: Queries drawn per picture.
        top_k: Gallery items per query.
    """

    def __init__(self, num_queries: int = 8, top_k: int = 10) -> None:
        self.num_queries, self.top_k = num_queries, top_k

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hook = getattr(pl_module, "ranked_examples", None)
        if hook is None or self.num_queries <= 0:
            return
        examples = hook("test", self.num_queries, self.top_k)
        out_dir = pl_module.output_dir() if hasattr(pl_module, "output_dir") else Path(trainer.log_dir or ".")
        if not trainer.is_global_zero:
            return
        for name, rows in examples:
            path = rows.plot(out_dir / (f"ranked_test_{name}.png" if name else "ranked_test.png"))
            print(f"ranked results written to {path}")


class ExportArtifacts(pl.Callback):
    """After ``fit`` (not ``fast_dev_run``), rank zero calls ``pl_module.export(run_folder)`` with the
    weights the module chose for export (:meth:`~mmembed.lit.module.TrainModule.weights_for_export`:
    the last or the best checkpoint's, EMA-averaged where the module keeps an average)."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out_dir = pl_module.output_dir()  # a collective under DDP: every rank asks
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        context = (pl_module.weights_for_export() if hasattr(pl_module, "weights_for_export")
                   else contextlib.nullcontext())
        with context:
            pl_module.export(out_dir)


class RestoreTrainedWeights(pl.Callback):
    """Put the trained weights back when a run stops on an exception while the EMA weights are swapped
    in for evaluation (:class:`~mmembed.lit.module.TrainModule` attaches it when EMA is on)."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        swap_out = getattr(pl_module, "_swap_out_ema", None)
        if swap_out is not None:
            swap_out()


class ZeroShotClassification(pl.Callback):
    """Zero-shot top-k accuracy of the validation images after every validation epoch, and of
    the test images after ``test``.

    The text classifier is built from class names x prompt templates
    (:func:`mmembed.eval.zeroshot.zeroshot_classifier`); the images are the validation (or test)
    gallery of the datamodule, whose labels must be class ids. Class names and templates default
    to the datamodule's ``classnames`` and ``zeroshot_templates`` attributes (e.g.
    :class:`~mmembed.data.fashion_mnist.FashionMNISTDataModule`). Logged as
    ``val/{name}_top1``, ``val/{name}_top5``, ... (``test/...`` after ``test``).

    Args:
        classnames: Class names in label order (None: ``datamodule.classnames``).
        templates: Prompt templates with one ``{}`` (None: ``datamodule.zeroshot_templates``).
        ks: Top-k cut-offs.
        name: Metric name after the stage prefix.
        batch_size: Images encoded per forward.
    """

    def __init__(self, classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                 ks: Sequence[int] = (1, 5), name: str = "zeroshot", batch_size: int = 512) -> None:
        self.classnames, self.templates = classnames, templates
        self.ks, self.name, self.batch_size = tuple(ks), name, batch_size

    @torch.no_grad()
    def evaluate(self, datamodule: Any, encoder: torch.nn.Module, device: torch.device,
                 split: str | None = None) -> dict[str, float]:
        """Top-k accuracy (%) of the encoder on the images of a split (None: the validation split)."""
        from mmembed.eval.zeroshot import zeroshot_accuracy, zeroshot_classifier

        classnames = self.classnames or getattr(datamodule, "classnames", None)
        templates = self.templates or getattr(datamodule, "zeroshot_templates", None)
        if not classnames or not templates:
            raise ValueError("ZeroShotClassification needs classnames and templates (init args, or the "
                             "datamodule's classnames / zeroshot_templates attributes)")
        _, gallery = datamodule.eval_datasets(split or datamodule.val_split)
        feats, labels = [], []
        collate = datamodule.require_processor().eval_collate
        for batch in torch.utils.data.DataLoader(gallery, batch_size=self.batch_size, collate_fn=collate):
            feats.append(encoder.encode({"image": batch["image"].to(device)}, "image").float())
            labels.append(torch.as_tensor(batch["label"]))
        clf = zeroshot_classifier(lambda ids: encoder.encode({"text": ids}, "text"), encoder.processor.tokenizer,
                                  list(classnames), list(templates), device=device)
        return zeroshot_accuracy(torch.cat(feats), clf, torch.cat(labels).to(device), self.ks)

    def _log(self, pl_module: pl.LightningModule, stage: str, scores: dict[str, float]) -> None:
        for key, value in scores.items():  # every rank scores the whole gallery: identical values
            pl_module.log(f"{stage}/{self.name}_{key}", value, sync_dist=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._log(pl_module, "val", self.evaluate(trainer.datamodule, pl_module.encoder, pl_module.device))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scores = self.evaluate(trainer.datamodule, pl_module.encoder, pl_module.device, split="test")
        self._log(pl_module, "test", scores)
        if trainer.is_global_zero:
            n = len(trainer.datamodule.eval_datasets("test")[1])
            print(f"zero-shot classification (test, {n} images): "
                  + ", ".join(f"top-{k[3:]} {v:.2f}%" for k, v in scores.items()))
