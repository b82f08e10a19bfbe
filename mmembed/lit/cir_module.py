"""ComposedRetrievalModule: the Lightning base of projection-based zero-shot composed image retrieval.

A frozen CLIP (image tower and the original text tower), a projection ``phi`` (image embedding ->
one pseudo-word token) and a query-side text encoder. Validation and test encode each query set's
gallery with the frozen image tower, then every composed query ``"a photo of $ that {text}"`` with
``phi(reference)`` in the ``$`` slot, and score them with the benchmark's protocol
(:class:`~mmembed.data.cir_datamodule.CIRDataModule` and its subclasses supply the loaders). Metrics are logged as
``{stage}/{query set}_{metric}`` (``val/cirr_r1``, ``test/fashioniq_dress_r10``), plus the
benchmarks' summaries (``cirr_avg`` = (R@5 + R_s@1)/2; FashionIQ and GeneCIS means over
categories / tasks). Where a split hides its targets (CIRR ``test1``, CIRCO ``test``), test writes
the evaluation-server files instead.

Frozen modules stay in eval mode whatever Lightning does: :meth:`train` puts them back after every
mode switch, and they are pinned again before every training batch (Lightning restores recorded
per-module modes instead of calling ``train()``), so phi's dropout never turns on.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from mmembed.lit.embedding_module import EmbeddingModule

__all__ = ["ComposedRetrievalModule"]


class ComposedRetrievalModule(EmbeddingModule):
    """Base class: subclasses set :attr:`phi` and may override :meth:`query_text_encoder`,
    :meth:`frozen_modules` and :meth:`compute_loss`.

    Args:
        encoder: :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`; frozen here.
        optimizer, lr_scheduler, lr_scheduler_interval, no_decay_1d: See :class:`EmbeddingModule`
            (the official LinCIR / RTD runs decay every parameter: ``no_decay_1d`` defaults to False).
        plot_queries: Test queries drawn in ``ranked_test.png`` (reference, text, top-K; 0: none).
        plot_top_k: Gallery images per drawn query.

    Shapes:
        gallery: (G, D) raw image embeddings; composed queries: (Q, D); scores: (Q, G).
    """

    phi: nn.Module

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "step",
        no_decay_1d: bool = False,
        plot_queries: int = 6,
        plot_top_k: int = 8,
    ) -> None:
        super().__init__(encoder, None, optimizer, lr_scheduler, lr_scheduler_interval, no_decay_1d,
                         plot_queries=plot_queries, plot_top_k=plot_top_k, export_encoder=False)
        self.encoder.requires_grad_(False)
        if getattr(encoder, "pretrained", "") is None:
            warnings.warn(f"{type(self).__name__}: the frozen CLIP has no pretrained weights (random init); set "
                          "model.init_args.encoder.init_args.pretrained to a local open_clip checkpoint", stacklevel=2)
        self._sets: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ hooks
    def query_text_encoder(self) -> nn.Module:
        """The text encoder of composed queries (the frozen CLIP one unless a method tunes a copy)."""
        return self.encoder

    def frozen_modules(self) -> list[nn.Module]:
        """Modules kept in eval mode and out of the optimizer."""
        return [self.encoder, self.phi]

    def train(self, mode: bool = True) -> ComposedRetrievalModule:
        super().train(mode)
        self._pin_frozen()
        return self

    def _pin_frozen(self) -> None:
        for module in self.frozen_modules():
            module.eval()

    def on_fit_start(self) -> None:
        self._pin_frozen()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning restores recorded per-module modes rather than calling train(): set them here
        self.train(True)

    # -------------------------------------------------------------- evaluation
    def _datasets(self) -> list[Any]:
        loaders = self.trainer.test_dataloaders if self.trainer.testing else self.trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        return [loader.dataset for loader in loaders]

    def _cir_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        dataset = self._datasets()[dataloader_idx]
        state = self._sets.setdefault(dataset.name, {"gallery": [], "queries": [], "dataset": None, "G": None})
        if "image" in batch:  # gallery loader
            raw = self.encoder.encode_image(batch["image"]).embedding.float()
            state["gallery"].append((batch["index"], raw))
            return
        state["dataset"] = dataset
        needed = batch["reference"].long().to(self.device)
        reference = self._gallery(state, needed)[needed]  # (B, D) raw reference embeddings
        tokens = self.phi(reference.to(self.dtype))
        encoder = self.query_text_encoder()
        q = F.normalize(encoder.encode_text(batch["text"], pseudo_tokens=tokens).embedding.float(), dim=-1)
        if "text2" in batch:  # FashionIQ: normalise(q1 + q2) over the two caption orders
            q2 = F.normalize(encoder.encode_text(batch["text2"], pseudo_tokens=tokens).embedding.float(), dim=-1)
            q = F.normalize(q + q2, dim=-1)
        state["queries"].append((batch["index"], q))

    def _gallery(self, state: dict[str, Any], needed: Tensor) -> Tensor:
        """The query set's gallery embeddings, gathered once. In a partial run (``limit_val_batches``)
        the references a query batch ``needed`` that the run did not encode are encoded from the
        dataset on demand. Shapes: needed (B,) -> (G, D)."""
        if state["G"] is None:
            from mmembed.distributed import gather_for_eval

            parts = state["gallery"]
            full = torch.zeros(len(state["dataset"].gallery), self.encoder.embed_dim, device=self.device)
            have = torch.zeros(full.shape[0], dtype=torch.bool, device=self.device)
            if parts:
                index, emb = gather_for_eval(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
                full[index], have[index] = emb, True
            state["G"], state["have"], state["complete"] = full, have, bool(have.all())
        full, have = state["G"], state["have"]
        missing = needed[~have[needed]].unique().tolist()
        if missing:
            dataset = state["dataset"].gallery
            images = torch.stack([dataset[i]["image"] for i in missing]).to(self.device)
            full[missing] = self.encoder.encode_image(images).embedding.float()
            have[missing] = True
        return full

    def _cir_epoch_end(self, stage: str) -> None:
        from mmembed.distributed import gather_for_eval
        from mmembed.eval.cir import cir_metrics

        results: dict[str, dict[str, float]] = {}
        for name, state in self._sets.items():
            dataset = state["dataset"]
            if dataset is None or not state["queries"]:
                continue
            index, q = gather_for_eval(torch.cat([p[0] for p in state["queries"]]),
                                       torch.cat([p[1] for p in state["queries"]]))
            split = dataset.split
            complete = state["complete"] and index.numel() == len(split.queries)
            if not complete:  # a partial run (sanity check, limit_*_batches): no benchmark numbers
                continue
            scores = q @ F.normalize(state["G"], dim=-1).T  # (Q, G)
            hidden = [qq for qq in split.queries if qq.target is None and not qq.ground_truth]
            if hidden:
                if stage == "test":
                    self._write_submission(name, scores, split, dataset.protocol)
                continue
            results[name] = cir_metrics(scores, split, dataset.protocol)
            if stage == "test" and self.hparams.plot_queries > 0:
                self._plot_cir(name, scores, dataset, dataset.gallery)
        for key, value in _summaries(results).items():
            self.log(f"{stage}/{key}", value, sync_dist=True)
        fn = str(getattr(self.trainer.state.fn, "value", self.trainer.state.fn))
        if results and self.trainer.is_global_zero and fn in ("validate", "test"):
            from mmembed.eval.report import print_retrieval_table

            print_retrieval_table(results, f"composed image retrieval ({stage})")

    def _write_submission(self, name: str, scores: Tensor, split: Any, protocol: str) -> None:
        out_dir = self.output_dir()
        if not self.trainer.is_global_zero:
            return
        from mmembed.eval.cir_submission import circo_submission, cirr_submission

        if protocol == "cirr":
            paths = cirr_submission(scores, split, out_dir / f"submission_{name}")
        elif protocol == "circo":
            paths = (circo_submission(scores, split, out_dir / f"submission_{name}.json"),)
        else:
            return
        print(f"{name}: targets are hidden; evaluation-server files written: {', '.join(map(str, paths))}")

    def _plot_cir(self, name: str, scores: Tensor, queries: Any, gallery: Any) -> None:
        out_dir = self.output_dir()
        if not self.trainer.is_global_zero:
            return
        from mmembed.eval.cir_submission import top_k_positions
        from mmembed.eval.visualize import plot_ranked_results

        split, k = queries.split, self.hparams.plot_top_k
        rows = list(range(min(self.hparams.plot_queries, len(split.queries))))
        ranked, correct = [], []
        for r in rows:
            query = split.queries[r]
            exclude = query.reference if queries.protocol == "cirr" else None  # CIRR rankings drop the reference
            top = top_k_positions(scores[r].cpu(), k, exclude=exclude)
            truth = set(query.ground_truth or ([query.target] if query.target is not None else []))
            ranked.append(torch.tensor(top))
            correct.append(torch.tensor([j in truth for j in top]))
        path = plot_ranked_results(
            [queries.texts[r] for r in rows], gallery.image_paths, torch.stack(ranked), torch.stack(correct),
            out_dir / f"ranked_test_{name}.png", title=f"{name}: reference (blue), modification and top-{k} (green = the annotated target)",
            query_images=[gallery.image_paths[split.queries[r].reference] for r in rows],
        )
        print(f"ranked results written to {path}")

    def on_validation_epoch_start(self) -> None:
        self._sets.clear()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._cir_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._cir_epoch_end("val")
        self._sets.clear()

    def on_test_epoch_start(self) -> None:
        self._sets.clear()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._cir_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._cir_epoch_end("test")
        self._sets.clear()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        raise NotImplementedError("predict is not defined for composed retrieval; use test")


def _summaries(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat ``{set}_{metric}`` values plus each benchmark's summary numbers."""
    out = {f"{name}_{metric}": value for name, metrics in results.items() for metric, value in metrics.items()}
    for family in ("fashioniq", "genecis"):
        sets = [m for name, m in results.items() if name.startswith(family + "_")]
        for metric in sets[0] if sets else []:
            out[f"{family}_{metric}"] = sum(m[metric] for m in sets) / len(sets)
    if "fashioniq_r10" in out:
        out["fashioniq_avg"] = (out["fashioniq_r10"] + out["fashioniq_r50"]) / 2
    if "cirr" in results:
        out["cirr_avg"] = (results["cirr"]["r5"] + results["cirr"]["subset_r1"]) / 2
    return out
