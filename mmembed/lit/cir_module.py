"""ComposedRetrievalModule: the Lightning base of projection-based zero-shot composed image retrieval.

A frozen CLIP (image tower and the original text tower), a projection ``phi`` (image embedding ->
one pseudo-word token) and a query-side text encoder. Validation and test encode each query set's
gallery with the frozen image tower, then every composed query ``"a photo of $ that {text}"`` with
``phi(reference)`` in the ``$`` slot, and score them with the benchmark's protocol through
:class:`~mmembed.eval.cir.CIREvaluator` (:class:`~mmembed.data.cir_datamodule.CIRDataModule` and its
subclasses supply the loaders). Metrics are logged as ``{stage}/{query set}_{metric}``
(``val/cirr_r1``, ``test/fashioniq_dress_r10``), plus the benchmarks' summaries (``cirr_avg``,
FashionIQ and GeneCIS means). Where a split hides its targets (CIRR ``test1``, CIRCO ``test``), test
writes the evaluation-server files instead.

Frozen modules stay in eval mode whatever Lightning does: :meth:`train` puts them back after every
mode switch, and they are pinned again before every training batch (Lightning restores recorded
per-module modes instead of calling ``train()``), so phi's dropout never turns on.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.eval.cir import CIREvaluator, cir_summaries
from mmembed.eval.visualize import RankedExamples
from mmembed.lit.embedding_module import EmbeddingModule
from mmembed.nn.encoders.base import TokenEmbedder

__all__ = ["ComposedRetrievalModule"]


class ComposedRetrievalModule(EmbeddingModule):
    """Base class: subclasses set :attr:`phi` and may override :meth:`query_text_encoder`,
    :meth:`frozen_modules`, :meth:`compute_loss` and :meth:`export`.

    Args:
        encoder: A :class:`~mmembed.nn.encoders.base.TokenEmbedder` (pseudo-token text encoding),
            e.g. :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`; frozen here.
        lr_scheduler_interval: Scheduler stepping (the official runs: per step).
        no_decay_1d: The official LinCIR / RTD runs decay every parameter (False).
        plot_queries: Test queries drawn in ``ranked_test_<set>.png`` (reference, text, top-K; 0: none).
        plot_top_k: Gallery images per drawn query.
        export_encoder: Write the method's artifacts after ``fit`` (:meth:`export`).
        **kwargs: Optimisation options of :class:`~mmembed.lit.module.TrainModule`.

    Shapes:
        gallery: (G, D) raw image embeddings; composed queries: (Q, D); scores: (Q, G).
    """

    phi: nn.Module
    encoder_protocol = TokenEmbedder

    def __init__(
        self,
        encoder: nn.Module,
        lr_scheduler_interval: Literal["epoch", "step"] = "step",
        no_decay_1d: bool = False,
        plot_queries: int = 6,
        plot_top_k: int = 8,
        export_encoder: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder=encoder, loss=None,
                         lr_scheduler_interval=lr_scheduler_interval, no_decay_1d=no_decay_1d,
                         plot_queries=plot_queries, plot_top_k=plot_top_k, export_encoder=export_encoder, **kwargs)
        self.encoder.requires_grad_(False)
        if getattr(encoder, "pretrained", "") is None:
            warnings.warn(f"{type(self).__name__}: the frozen CLIP has no pretrained weights (random init); set "
                          "model.init_args.encoder.init_args.pretrained to a local open_clip checkpoint", stacklevel=2)
        self.cir = CIREvaluator()
        self._queries: dict[str, Any] = {}  # query set name -> its queries dataset, for this evaluation

    # ------------------------------------------------------------------ hooks
    def query_text_encoder(self) -> nn.Module:
        """The text encoder of composed queries (the frozen CLIP one unless a method tunes a copy)."""
        return self.encoder

    def frozen_modules(self) -> list[nn.Module]:
        """Modules kept in eval mode and out of the optimizer."""
        return [self.encoder, self.phi]

    def export(self, directory: Any) -> list[Any]:
        return []  # the frozen CLIP is the input, not a result; methods export what they train

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

    def evaluation_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        """Gallery loaders feed the set's raw image embeddings; query loaders its composed queries."""
        dataset = self._datasets()[dataloader_idx]
        split = dataset.split
        self.cir.add_set(dataset.name, split, getattr(dataset, "protocol", "cirr"), len(split.gallery_paths))
        if "image" in batch:  # gallery loader
            self.cir.update(dataset.name, "gallery", batch["index"], self.encoder.encode(batch, "image").float())
            return
        self._queries[dataset.name] = dataset
        self.cir.sets[dataset.name]["protocol"] = dataset.protocol
        needed = batch["reference"].long().to(self.device)
        reference = self._gallery(dataset, needed)[needed]  # (B, D) raw reference embeddings
        tokens = self.phi(reference.to(self.dtype))
        encoder = self.query_text_encoder()
        q = F.normalize(encoder.encode_text(batch["text"], pseudo_tokens=tokens).embedding.float(), dim=-1)
        if "text2" in batch:  # FashionIQ: normalise(q1 + q2) over the two caption orders
            q2 = F.normalize(encoder.encode_text(batch["text2"], pseudo_tokens=tokens).embedding.float(), dim=-1)
            q = F.normalize(q + q2, dim=-1)
        self.cir.update(dataset.name, "query", batch["index"], q)

    def _gallery(self, queries: Any, needed: Tensor) -> Tensor:
        """The query set's gallery embeddings, gathered once. In a partial run (``limit_val_batches``)
        the references a query batch ``needed`` that the run did not encode are encoded from the
        dataset on demand. Shapes: needed (B,) -> (G, D)."""
        full, have = self.cir.gallery(queries.name, self.device)
        missing = needed[~have[needed]].unique().tolist()
        if missing:
            gallery = queries.gallery
            batch = self.encoder.processor.eval_collate([gallery[i] for i in missing])
            self.cir.fill_gallery(queries.name, missing, self.encoder.encode({"image": batch["image"].to(self.device)},
                                                                             "image").float())
            full, _ = self.cir.gallery(queries.name, self.device)
        return full

    def _cir_epoch_end(self, stage: str) -> None:
        queries = self._queries
        if stage == "test":
            for name, dataset in queries.items():
                if self.cir.hidden(name):
                    scores = self.cir.scores(name)
                    if scores is not None:
                        self._write_submission(name, scores, dataset.split, dataset.protocol)
        results = self.cir.per_set()
        for key, value in cir_summaries(results).items():
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

    def ranked_examples(self, stage: str, num_queries: int, top_k: int) -> list[tuple[str, RankedExamples]]:
        """Reference, modification text and top-K of the first queries of each scored set."""
        from mmembed.eval.cir_submission import top_k_positions

        out = []
        for name, queries in self._queries.items():
            scores = None if self.cir.hidden(name) else self.cir.scores(name)
            if scores is None:
                continue
            split, gallery = queries.split, queries.gallery
            rows = list(range(min(num_queries, len(split.queries))))
            ranked, correct = [], []
            for r in rows:
                query = split.queries[r]
                exclude = query.reference if queries.protocol == "cirr" else None  # CIRR rankings drop the reference
                top = top_k_positions(scores[r].cpu(), top_k, exclude=exclude)
                truth = set(query.ground_truth or ([query.target] if query.target is not None else []))
                ranked.append(torch.tensor(top))
                correct.append(torch.tensor([j in truth for j in top]))
            out.append((name, RankedExamples(
                [queries.texts[r] for r in rows], gallery.image_paths, torch.stack(ranked), torch.stack(correct),
                title=f"{name}: reference (blue), modification and top-{top_k} (green = the annotated target)",
                query_images=[gallery.image_paths[split.queries[r].reference] for r in rows])))
        return out

    def _reset_eval(self) -> None:
        self.cir.reset()
        self._queries = {}

    def evaluation_start(self, stage: str) -> None:
        self._reset_eval()

    def evaluation_end(self, stage: str) -> None:
        self._cir_epoch_end(stage)
        self._reset_eval()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        raise NotImplementedError("predict is not defined for composed retrieval; use test")
