"""EmbeddingModule: contrastive training and retrieval evaluation over any :class:`~mmembed.nn.encoders.base.Embedder`.

A method subclasses it and overrides :meth:`compute_loss` and/or the encode hooks; optimisation,
logging and EMA come from :class:`~mmembed.lit.module.TrainModule`, ranked-result pictures and the
encoder export from callbacks (:mod:`mmembed.lit.callbacks`) that this module attaches when asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.eval.evaluator import RetrievalEvaluator
from mmembed.eval.visualize import RankedExamples
from mmembed.lit.module import TrainModule
from mmembed.nn.encoders.base import Embedder, require
from mmembed.types import Processor

__all__ = ["EmbeddingModule"]


class EmbeddingModule(TrainModule):
    """Cross-modal embedding model trained with a contrastive objective.

    Queries are texts and the gallery is images by default (text-to-image retrieval); metrics are
    logged as ``val/t2i_r1``, ``test/t2i_map``, ... and, ranking the captions for every image,
    ``val/i2t_r1``, ...

    Args:
        encoder: Any :class:`~mmembed.nn.encoders.base.Embedder` (e.g.
            :class:`mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`).
        loss: Module called as ``loss(image_emb, text_emb)`` on L2-normalised embeddings (e.g.
            :class:`mmembed.losses.ClipLoss`, :class:`mmembed.losses.SigLipLoss`). Methods that
            override :meth:`compute_loss` may leave it out.
        ks: R@K cut-offs.
        eval_chunk_size: Query chunk size when scoring (memory is chunk x gallery).
        plot_queries: Test queries drawn in ``ranked_test.png`` (0: none;
            :class:`~mmembed.lit.callbacks.RankedResults`).
        plot_top_k: Gallery items drawn per query.
        export_encoder: After ``fit``, write the encoder in its backend's format (open_clip state
            dict + config) into the run folder (:class:`~mmembed.lit.callbacks.ExportArtifacts`).
        **kwargs: Optimisation and EMA options of :class:`~mmembed.lit.module.TrainModule`
            (``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``, ``no_decay_1d``, ``ema_decay``, ``ema_eval``).

    Attributes:
        encoder_protocol: What the encoder must offer (checked at construction with a readable error):
            :class:`~mmembed.nn.encoders.base.Embedder` here; methods that need token-level access set
            :class:`~mmembed.nn.encoders.base.TokenEmbedder`.
    """

    encoder_protocol: type = Embedder

    def __init__(
        self,
        encoder: nn.Module,
        loss: nn.Module | None = None,
        ks: tuple[int, ...] = (1, 5, 10),
        eval_chunk_size: int = 1024,
        plot_queries: int = 8,
        plot_top_k: int = 10,
        export_encoder: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = require(encoder, self.encoder_protocol, type(self).__name__)
        self.loss = loss
        self.ks, self.eval_chunk_size = tuple(ks), eval_chunk_size
        self.plot_queries, self.plot_top_k, self.export_encoder = plot_queries, plot_top_k, export_encoder
        self.evaluators: dict[str, RetrievalEvaluator] = {}  # one per embedding view; "" is the main one

    # ------------------------------------------------------------------ inputs
    @property
    def processor(self) -> Processor:
        """Transforms, tokenizer and batch collation, linked into the datamodule by the CLI."""
        return self.encoder.processor

    def configure_callbacks(self) -> list[pl.Callback]:
        from mmembed.lit.callbacks import ExportArtifacts, RankedResults

        callbacks: list[pl.Callback] = super().configure_callbacks()
        if self.plot_queries > 0:
            callbacks.append(RankedResults(self.plot_queries, self.plot_top_k))
        if self.export_encoder:
            callbacks.append(ExportArtifacts())
        return callbacks

    # ------------------------------------------------------------------ hooks
    def encode(self, batch: dict[str, Any], side: str) -> Tensor:
        """The encoder's embeddings of one side of a batch. Shapes: batch -> (B, D)."""
        return self.encoder.encode(batch, side)

    def encode_query_batch(self, batch: dict[str, Any]) -> Tensor | dict[str, Tensor]:
        """Query embeddings (texts by default). Shapes: batch -> (B, D).

        A method may return several named views (``{"": main, "bge": ..., "tse": ...}``);
        each is evaluated and logged (``val/t2i_r1``, ``val/t2i_bge_r1``, ...), and the
        main view ``""`` drives checkpointing, prediction and the ranked-results picture.
        """
        return self.encode(batch, "text")

    def encode_gallery_batch(self, batch: dict[str, Any]) -> Tensor | dict[str, Tensor]:
        """Gallery embeddings (images by default), with the same views as the queries. Shapes: batch -> (B, D)."""
        return self.encode(batch, "image")

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Training objective; returns a dict with ``loss`` plus named parts for logging."""
        if self.loss is None:
            raise ValueError(f"{type(self).__name__} needs a loss module (model.init_args.loss)")
        image = F.normalize(self.encode(batch, "image"), dim=-1)  # (B, D)
        text = F.normalize(self.encode(batch, "text"), dim=-1)  # (B, D)
        out = {"loss": self.loss(image, text)}
        scale = getattr(self.loss, "logit_scale", None)
        if isinstance(scale, nn.Module):
            out["logit_scale"] = scale().detach()
        bias = getattr(self.loss, "logit_bias", None)
        if isinstance(bias, Tensor):
            out["logit_bias"] = bias.detach()
        return out

    def export(self, directory: Path) -> list[Path]:
        if not hasattr(self.encoder, "export"):
            return []
        paths = list(self.encoder.export(directory))
        if paths:
            print(f"encoder exported: {', '.join(map(str, paths))}")
        return paths

    # ------------------------------------------------------------- evaluation
    def _views(self, batch: dict[str, Any], side: str) -> dict[str, Tensor]:
        out = self.encode_query_batch(batch) if side == "query" else self.encode_gallery_batch(batch)
        return out if isinstance(out, dict) else {"": out}

    def evaluation_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        """Loader 0 holds the queries, loader 1 the gallery; every view feeds its own evaluator."""
        side = "query" if dataloader_idx == 0 else "gallery"
        for name, emb in self._views(batch, side).items():
            if name not in self.evaluators:
                self.evaluators[name] = RetrievalEvaluator(self.ks, self.eval_chunk_size)
            self.evaluators[name].update(side, emb, batch["label"], batch["index"])

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

    def ranked_examples(self, stage: str, num_queries: int, top_k: int) -> list[tuple[str, RankedExamples]]:
        """Queries spread over the set with their top-K gallery items, for
        :class:`~mmembed.lit.callbacks.RankedResults` (every rank calls it: it gathers)."""
        if "" not in self.evaluators:
            return []
        loaders = getattr(self.trainer, f"{stage}_dataloaders")
        queries, gallery = loaders[0].dataset, loaders[1].dataset
        qi, ranked, correct = (t.cpu() for t in self.evaluators[""].top_k(num_queries, top_k))
        texts, paths = getattr(queries, "texts", None), getattr(gallery, "image_paths", None)
        if texts is None or paths is None:
            return []
        return [("", RankedExamples(
            [texts[int(i)] for i in qi], paths, ranked, correct,
            title=f"{stage}: text queries and top-{ranked.shape[1]} images (green = same identity)"))]

    def evaluation_start(self, stage: str) -> None:
        self.evaluators.clear()

    def evaluation_end(self, stage: str) -> None:
        self._log_metrics(stage)
        self.evaluators.clear()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        emb = self._views(batch, "query" if dataloader_idx == 0 else "gallery")[""]
        return {"embedding": emb, "label": batch["label"], "index": batch["index"]}
