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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmembed.data.cir import PROMPT
from mmembed.lit.cir_module import ComposedRetrievalModule
from mmembed.methods.rtd.objective import rtd_loss
from mmembed.methods.rtd.prompts import rtd_pairs
from mmembed.methods.rtd.triplets import TextTriplet
from mmembed.nn.phi import Phi, noise_std, noisy_embeddings

__all__ = ["RTD"]


class RTD(ComposedRetrievalModule):
    """RTD on a projection method's phi (data: :class:`~mmembed.methods.rtd.data.TripletDataModule`).

    Args:
        encoder: :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`: frozen image tower and
            the frozen anchor text tower; the trainable query tower starts as a copy of it
            (``encoder.text_copy(trainable=True)``).
        phi_checkpoint: The base method's phi (``phi.pt`` from LinCIR, or its ``.ckpt``).
        query_checkpoint: Start the query tower from these text weights instead of the frozen tower:
            RTD's released text encoder (``{"CLIPTextModelWithProjection": ...}``, transformers names),
            an ``open_clip_query_model.pt`` export, or any file the encoder's ``pretrained`` reads.
            Only the text tower is taken; evaluating a released RTD model is ``mmembed test`` with it.
        noise_scale: Noise on the reference caption embedding before phi (RTD: 0.5, absolute).
        noise_relative: Read ``noise_scale`` relative to the embeddings' mean norm.
        temperature: NT-Xent temperature (RTD: 0.07, fixed).
        frozen_anchor: Anchors from the frozen text tower (RTD). ``False`` is the paper's "no
            anchor" ablation: the trainable tower encodes the anchors too, with gradient.
        prompt: Composed-query prompt (training and evaluation).
        **kwargs: See :class:`~mmembed.lit.cir_module.ComposedRetrievalModule` (RTD: AdamW, lr 1e-5,
            weight decay 0.01 on every parameter, constant learning rate, 2000 steps);
            ``export_encoder`` exports the tuned query encoder after ``fit``.

    Shapes:
        batch: B triplets -> 2B (query, anchor) pairs -> loss ().
    """

    def __init__(
        self,
        encoder: nn.Module,
        phi_checkpoint: str | None = None,
        query_checkpoint: str | None = None,
        noise_scale: float = 0.5,
        noise_relative: bool = False,
        temperature: float = 0.07,
        frozen_anchor: bool = True,
        prompt: str = PROMPT,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder=encoder, **kwargs)
        if phi_checkpoint is None:
            raise ValueError("RTD tunes the text encoder for a trained projection: set model.init_args.phi_checkpoint "
                             "to the phi.pt that LinCIR wrote into its run folder")
        self.phi = Phi.load(phi_checkpoint)
        if self.phi.config["input_dim"] != encoder.embed_dim or self.phi.config["output_dim"] != encoder.text_width:
            raise ValueError(f"phi maps {self.phi.config['input_dim']} -> {self.phi.config['output_dim']}, but the "
                             f"encoder has embed_dim {encoder.embed_dim} and text width {encoder.text_width}: "
                             "phi was trained for another CLIP")
        self.phi.requires_grad_(False).eval()
        self.query_encoder = encoder.text_copy(trainable=True)
        if query_checkpoint is not None:
            self.query_encoder.load_text_weights(query_checkpoint)

    def query_text_encoder(self) -> nn.Module:
        return self.query_encoder

    @staticmethod
    def triplets_of(batch: dict[str, Any]) -> list[TextTriplet]:
        """The batch's triplets (lists of strings under ``reference``, ``conditioning``, ``target``)."""
        return [TextTriplet(*t) for t in zip(batch["reference"], batch["conditioning"], batch["target"], strict=True)]

    def encode_triplets(self, triplets: Sequence[TextTriplet],
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Anchors and refined queries of one batch (Sec. 4.7 of the specification).

        The anchor encoder (frozen, no gradient; the query encoder itself when ``frozen_anchor`` is
        False) encodes ``[targets; references]``; phi (frozen, eval mode) maps the noisy reference
        embeddings to pseudo tokens; the query encoder encodes the 2B refined prompts with them.

        Raises:
            ValueError: If phi or the frozen anchor encoder is in training mode.

        Shapes:
            B triplets -> anchors (2B, D), queries (2B, D).
        """
        h = self.hparams
        anchor_encoder = self.encoder if h.frozen_anchor else self.query_encoder
        for name, module in (("phi", self.phi), ("anchor_encoder", self.encoder if h.frozen_anchor else None)):
            if module is not None and module.training:
                raise ValueError(f"{name} must be in eval mode (frozen; dropout off): call .eval() on it")
        tokenizer = self.encoder.tokenizer
        queries, anchors_text, rows = rtd_pairs(triplets, h.prompt)
        b = len(triplets)
        with torch.set_grad_enabled(not h.frozen_anchor and torch.is_grad_enabled()):
            anchors = anchor_encoder.encode_text(tokenizer(anchors_text).to(self.device)).embedding  # (2B, D): T_t, T_r
        with torch.no_grad():
            reference = anchors[b:].detach()  # e_r: the raw reference-caption embeddings
            sigma = noise_std(reference, h.noise_scale, h.noise_relative)
            tokens = self.phi(noisy_embeddings(reference, sigma, generator))  # (B, W)
        q = self.query_encoder.encode_text(tokenizer(queries).to(self.device), pseudo_tokens=tokens[rows]).embedding
        return anchors, q

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        anchors, queries = self.encode_triplets(self.triplets_of(batch))
        return {"loss": rtd_loss(anchors, queries, self.hparams.temperature)}

    def export(self, directory: Path) -> list[Path]:
        """Write the query-side open_clip model (the tuned text tower with the frozen image tower) as
        ``open_clip_query_model.pt`` / ``open_clip_query_config.json``, and a copy of phi."""
        directory = Path(directory)
        weights, config = self.encoder.export(directory, stem="open_clip_query", text_from=self.query_encoder)
        phi = self.phi.save(directory / "phi.pt", method="rtd-base", source=self.hparams.phi_checkpoint)
        print(f"query encoder exported as a plain open_clip state dict: {weights} (phi copied to {phi})")
        return [weights, config, phi]
