"""EmbeddingModule: the one training loop every method builds on.

A method subclasses :class:`EmbeddingModule` and overrides the encode hooks
and/or :meth:`compute_loss`; optimisation, logging, validation, test,
prediction, ranked-result pictures and encoder export live here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from mmembed.eval.evaluator import RetrievalEvaluator
from mmembed.nn.heads import LogitScale
from mmembed.types import Processor


class EmbeddingModule(pl.LightningModule):
    """Cross-modal embedding model trained with a contrastive objective.

    Queries are texts and the gallery is images by default (text-to-image
    retrieval); metrics are logged as ``val/t2i_r1``, ``test/t2i_map``, ...

    Args:
        encoder: Dual encoder with ``encode_image``, ``encode_text`` and ``processor``
            (e.g. :class:`mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`).
        loss: Module called as ``loss(image_emb, text_emb)`` on L2-normalised
            embeddings (e.g. :class:`mmembed.losses.ClipLoss`). Methods that override
            :meth:`compute_loss` may leave it out.
        optimizer: Optimizer factory; parameters with fewer than 2 dims get no weight decay
            when ``no_decay_1d`` is set.
        lr_scheduler: Optional scheduler factory.
        lr_scheduler_interval: Step the scheduler every ``"epoch"`` or every ``"step"``.
        no_decay_1d: Put biases, norms and scalars in a group with weight decay 0.
        ks: R@K cut-offs.
        eval_chunk_size: Query chunk size when scoring (memory is chunk x gallery).
        plot_queries: Number of test queries drawn in the ranked-results PNG (0: none).
        plot_top_k: Gallery images drawn per query.
        export_encoder: After ``fit``, write the encoder as a plain open_clip state dict
            (plus its config) into the log directory.
    """

    def __init__(
        self,
        encoder: nn.Module,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        no_decay_1d: bool = True,
        ks: tuple[int, ...] = (1, 5, 10),
        eval_chunk_size: int = 1024,
        plot_queries: int = 8,
        plot_top_k: int = 10,
        export_encoder: bool = True,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # Through the CLI, modules are saved as their class_path config (so load_from_checkpoint works).
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        for key in ("encoder", "loss"):  # plain-Python construction: module objects are not config
            if isinstance(self.hparams.get(key), nn.Module):
                self.hparams.pop(key)
                self._hparams_initial.pop(key, None)
        self.encoder = encoder
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.evaluators: dict[str, RetrievalEvaluator] = {}  # one per embedding view; "" is the main one
        self._logit_scales: list[LogitScale] | None = None  # found on the first step

    # ------------------------------------------------------------------ inputs
    @property
    def processor(self) -> Processor:
        """Transforms and tokenizer, linked into the datamodule by the CLI."""
        return self.encoder.processor

    # ------------------------------------------------------------------ hooks
    def encode_query_batch(self, batch: dict[str, Any]) -> Tensor | dict[str, Tensor]:
        """Query embeddings (texts by default). Shapes: batch -> (B, D).

        A method may return several named views (``{"": main, "bge": ..., "tse": ...}``);
        each is evaluated and logged (``val/t2i_r1``, ``val/t2i_bge_r1``, ...), and the
        main view ``""`` drives checkpointing, prediction and the ranked-results picture.
        """
        return self.encoder.encode_text(batch["text"]).embedding

    def encode_gallery_batch(self, batch: dict[str, Any]) -> Tensor | dict[str, Tensor]:
        """Gallery embeddings (images by default), with the same views as the queries. Shapes: batch -> (B, D)."""
        return self.encoder.encode_image(batch["image"]).embedding

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Training objective; returns a dict with ``loss`` plus named parts for logging."""
        if self.loss is None:
            raise ValueError(f"{type(self).__name__} needs a loss module (model.init_args.loss)")
        image = F.normalize(self.encoder.encode_image(batch["image"]).embedding, dim=-1)  # (B, D)
        text = F.normalize(self.encoder.encode_text(batch["text"]).embedding, dim=-1)  # (B, D)
        out = {"loss": self.loss(image, text)}
        scale = getattr(self.loss, "logit_scale", None)
        if isinstance(scale, nn.Module):
            out["logit_scale"] = scale().detach()
        return out

    # --------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.compute_loss(batch)
        bs = int(batch["index"].shape[0])
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=bs)
        return out["loss"]

    def on_before_zero_grad(self, optimizer: Any) -> None:
        # Runs right after each optimizer step: keep learnable temperatures in range (as CLIP does).
        if self._logit_scales is None:
            self._logit_scales = [m for m in self.modules() if isinstance(m, LogitScale)]
        for module in self._logit_scales:
            module.clamp_()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not self.hparams.no_decay_1d:
            return self.optimize_groups([{"params": params}])
        return self.optimize_groups([
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ])

    def optimize_groups(self, groups: list[dict[str, Any]]) -> Any:
        """Build the configured optimizer over parameter groups, then attach the scheduler.

        A group may carry ``lr_factor``: its learning rate becomes the optimizer's base lr times
        that factor (the key is removed). Empty groups are dropped.
        """
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        for group in optimizer.param_groups:
            group["lr"] *= group.pop("lr_factor", 1.0)
        return self.with_scheduler(optimizer)

    def with_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Attach the configured scheduler (if any) to ``optimizer``, in Lightning's return format."""
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_scheduler_interval}}

    # ------------------------------------------------------------- evaluation
    def _views(self, batch: dict[str, Any], side: str) -> dict[str, Tensor]:
        out = self.encode_query_batch(batch) if side == "query" else self.encode_gallery_batch(batch)
        return out if isinstance(out, dict) else {"": out}

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        side = "query" if dataloader_idx == 0 else "gallery"
        for name, emb in self._views(batch, side).items():
            if name not in self.evaluators:
                self.evaluators[name] = RetrievalEvaluator(self.hparams.ks, self.hparams.eval_chunk_size)
            self.evaluators[name].add(side, emb, batch["label"], batch["index"])

    def _partial_eval(self, stage: str) -> bool:
        trainer = self.trainer
        limit = getattr(trainer, f"limit_{stage}_batches", 1.0)
        return bool(trainer.sanity_checking or trainer.fast_dev_run or limit != 1.0)

    def _log_metrics(self, stage: str) -> None:
        rows: dict[str, dict[str, dict[str, float]]] = {"t2i": {}, "i2t": {}}
        partial = self._partial_eval(stage)
        for view, evaluator in self.evaluators.items():
            for direction in ("t2i", "i2t"):
                metrics = evaluator.compute(drop_queries_without_positives=partial, reverse=direction == "i2t")
                rows[direction][view or "main"] = metrics
                prefix = f"{stage}/{direction}_{view}_" if view else f"{stage}/{direction}_"
                for name, value in metrics.items():
                    # identical on every rank (gathered above); sync_dist only keeps Lightning's bookkeeping consistent
                    self.log(prefix + name, value, sync_dist=True)
        fn = str(getattr(self.trainer.state.fn, "value", self.trainer.state.fn))
        main = self.evaluators.get("")
        if main and rows["t2i"].get("main") and self.trainer.is_global_zero and fn in ("validate", "test"):
            from mmembed.eval.report import print_retrieval_table

            n_q, n_g = main.sizes
            print_retrieval_table(rows["t2i"], f"text-to-image retrieval ({stage}: {n_q} queries x {n_g} gallery images)")
            print_retrieval_table(rows["i2t"], f"image-to-text retrieval ({stage}: {n_g} images x {n_q} captions)")

    def on_validation_epoch_start(self) -> None:
        self.evaluators.clear()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self.evaluators.clear()

    def on_test_epoch_start(self) -> None:
        self.evaluators.clear()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        if self.hparams.plot_queries > 0 and "" in self.evaluators:
            self._plot_ranked("test")
        self.evaluators.clear()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        emb = self._views(batch, "query" if dataloader_idx == 0 else "gallery")[""]
        return {"embedding": emb, "label": batch["label"], "index": batch["index"]}

    # ------------------------------------------------------------------ outputs
    def output_dir(self) -> Path:
        """Where this run writes pictures and exports (the logger's version folder).

        Under DDP ``trainer.log_dir`` broadcasts, so every rank must call this.
        """
        trainer = self.trainer
        return Path(trainer.log_dir or trainer.default_root_dir)

    def _plot_ranked(self, stage: str) -> None:
        loaders = getattr(self.trainer, f"{stage}_dataloaders")
        queries, gallery = loaders[0].dataset, loaders[1].dataset
        qi, ranked, correct = self.evaluators[""].top_k(self.hparams.plot_queries, self.hparams.plot_top_k)
        qi, ranked, correct = qi.cpu(), ranked.cpu(), correct.cpu()
        out_dir = self.output_dir()  # a collective under DDP: every rank asks
        texts, paths = getattr(queries, "texts", None), getattr(gallery, "image_paths", None)
        if not self.trainer.is_global_zero or texts is None or paths is None:
            return
        from mmembed.eval.visualize import plot_ranked_results

        path = plot_ranked_results(
            [texts[int(i)] for i in qi], paths, ranked, correct, out_dir / f"ranked_{stage}.png",
            title=f"{stage}: text queries and top-{ranked.shape[1]} images (green = same identity)",
        )
        print(f"ranked results written to {path}")

    def on_fit_end(self) -> None:
        out_dir = self.output_dir()  # a collective under DDP: every rank asks
        if self.trainer.fast_dev_run:  # debugging run: no logger, nothing to keep
            return
        if self.hparams.export_encoder and self.trainer.is_global_zero and hasattr(self.encoder, "export"):
            weights, _ = self.encoder.export(out_dir)
            print(f"encoder exported as a plain open_clip state dict: {weights}")
