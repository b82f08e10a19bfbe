"""RTD: post-hoc tuning of the query-side text encoder for projection-based zero-shot CIR.

A trainable copy of the CLIP text tower learns, on text triplets, to put the composed query
``"a photo of $ that {T_c}"`` (``$`` = the frozen phi of the noisy reference caption embedding)
where the *frozen* text tower puts the target caption; the frozen tower and phi stay untouched,
and so does the image tower, so gallery features never change. After ``fit`` the tuned query
encoder is exported as a plain open_clip model (tuned text tower + the original image tower) in
``open_clip_query_model.pt`` / ``open_clip_query_config.json``, next to a copy of phi.

References:
    Byun et al., "An Efficient Post-hoc Framework for Reducing Task Discrepancy of Text Encoders
    for Composed Image Retrieval" (RTD), ICCV 2025, https://arxiv.org/abs/2406.09188.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from mmembed.data.cir import PROMPT
from mmembed.lit.cir_module import ComposedRetrievalModule
from mmembed.methods.rtd.objective import rtd_loss
from mmembed.methods.rtd.triplets import TextTriplet
from mmembed.nn.phi import Phi

__all__ = ["RTD", "text_copy"]


def text_copy(encoder: nn.Module) -> nn.Module:
    """A deep copy of an :class:`OpenCLIPDualEncoder` without its image tower (text side only).

    The image tower is swapped out during the copy, so it is never duplicated in memory.
    """
    visual = encoder.model.visual
    encoder.model.visual = nn.Identity()
    try:
        clone = copy.deepcopy(encoder)
    finally:
        encoder.model.visual = visual
    return clone


class RTD(ComposedRetrievalModule):
    """RTD on a projection method's phi (data: :class:`~mmembed.methods.rtd.data.TripletDataModule`).

    Args:
        encoder: :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`: frozen image tower and
            the frozen anchor text tower; the trainable query tower starts as a copy of it.
        phi_checkpoint: The base method's phi (``phi.pt`` from LinCIR, or its ``.ckpt``).
        noise_scale: Noise on the reference caption embedding before phi (RTD: 0.5, absolute).
        noise_relative: Read ``noise_scale`` relative to the embeddings' mean norm.
        temperature: NT-Xent temperature (RTD: 0.07, fixed).
        frozen_anchor: Anchors from the frozen text tower (RTD). ``False`` is the paper's "no
            anchor" ablation: the trainable tower encodes the anchors too, with gradient.
        prompt: Composed-query prompt (training and evaluation).
        optimizer, lr_scheduler, lr_scheduler_interval, no_decay_1d, plot_queries, plot_top_k:
            See :class:`~mmembed.lit.cir_module.ComposedRetrievalModule` (RTD: AdamW, lr 1e-5,
            weight decay 0.01 on every parameter, constant learning rate, 2000 steps).
        export_encoder: Export the tuned query encoder after ``fit``.

    Shapes:
        batch: B triplets -> 2B (query, anchor) pairs -> loss ().
    """

    def __init__(
        self,
        encoder: nn.Module,
        phi_checkpoint: str | None = None,
        noise_scale: float = 0.5,
        noise_relative: bool = False,
        temperature: float = 0.07,
        frozen_anchor: bool = True,
        prompt: str = PROMPT,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "step",
        no_decay_1d: bool = False,
        plot_queries: int = 6,
        plot_top_k: int = 8,
        export_encoder: bool = True,
    ) -> None:
        super().__init__(encoder, optimizer, lr_scheduler, lr_scheduler_interval, no_decay_1d, plot_queries, plot_top_k)
        self.hparams.export_encoder = export_encoder
        if phi_checkpoint is None:
            raise ValueError("RTD tunes the text encoder for a trained projection: set model.init_args.phi_checkpoint "
                             "to the phi.pt that LinCIR wrote into its run folder")
        self.phi = Phi.load(phi_checkpoint)
        if self.phi.config["input_dim"] != encoder.embed_dim or self.phi.config["output_dim"] != encoder.text_width:
            raise ValueError(f"phi maps {self.phi.config['input_dim']} -> {self.phi.config['output_dim']}, but the "
                             f"encoder has embed_dim {encoder.embed_dim} and text width {encoder.text_width}: "
                             "phi was trained for another CLIP")
        self.phi.requires_grad_(False).eval()
        self.query_encoder = text_copy(encoder)
        self.query_encoder.requires_grad_(True)
        for name in ("logit_scale", "logit_bias"):  # unused by text encoding
            if isinstance(getattr(self.query_encoder.model, name, None), nn.Parameter):
                getattr(self.query_encoder.model, name).requires_grad_(False)

    def query_text_encoder(self) -> nn.Module:
        return self.query_encoder

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        triplets = [TextTriplet(*t) for t in zip(batch["reference"], batch["conditioning"], batch["target"],
                                                 strict=True)]
        anchor = self.encoder if self.hparams.frozen_anchor else self.query_encoder
        loss = rtd_loss(self.query_encoder, anchor, self.phi, triplets, self.hparams.noise_scale,
                        self.hparams.temperature, self.hparams.prompt, noise_relative=self.hparams.noise_relative)
        return {"loss": loss}

    def export_query_encoder(self, directory: Any) -> tuple[Any, Any]:
        """Write the query-side open_clip model: the tuned text tower with the frozen image tower.

        Returns:
            ``(weights_path, config_path)``.
        """
        merged = text_copy(self.query_encoder)
        merged.model.visual = self.encoder.model.visual  # shared, not copied
        return merged.export(directory, stem="open_clip_query")

    def on_fit_end(self) -> None:
        out_dir = self.output_dir()  # a collective under DDP: every rank asks
        if self.trainer.fast_dev_run or not self.hparams.export_encoder or not self.trainer.is_global_zero:
            return
        weights, _ = self.export_query_encoder(out_dir)
        self.phi.save(out_dir / "phi.pt", method="rtd-base", source=self.hparams.phi_checkpoint)
        print(f"query encoder exported as a plain open_clip state dict: {weights} (phi copied to {out_dir / 'phi.pt'})")
