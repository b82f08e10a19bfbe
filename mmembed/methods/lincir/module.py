"""LinCIR: language-only training of the projection phi on a frozen CLIP.

One step: the caption's embedding ``e`` (frozen text tower), noisy input ``e + sigma * u * eps``,
``s = phi(.)``, the keyword-masked caption encoded with ``s`` in every ``$`` slot, and the MSE to
``e``. Only phi learns. After ``fit`` phi is written on its own as ``phi.pt`` in the run folder
(:meth:`~mmembed.nn.phi.Phi.load` reads it, and RTD takes it as ``phi_checkpoint``).

References:
    Gu et al., "Language-only Training of Zero-shot Composed Image Retrieval" (LinCIR), CVPR 2024,
    https://arxiv.org/abs/2312.01998.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.lit.cir_module import ComposedRetrievalModule
from mmembed.methods.lincir.keywords import FALLBACK
from mmembed.methods.lincir.objective import lincir_loss
from mmembed.nn.phi import Phi, noise_std, noisy_embeddings

__all__ = ["LinCIR"]


class LinCIR(ComposedRetrievalModule):
    """LinCIR's self-masking projection, trained on captions only (data:
    :class:`~mmembed.methods.lincir.data.CaptionDataModule`).

    Args:
        encoder: :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder` (frozen).
        phi_arch: ``lincir`` (the paper's MLP) or ``pic2word`` (Pic2Word's mapping network).
        phi_hidden_dim: Hidden width (None: ``4 * D`` for ``lincir``).
        phi_dropout: Dropout in phi (LinCIR: 0.5).
        noise_scale: Input noise sigma (LinCIR: 1.0, absolute for CLIP ViT-L/14).
        noise_relative: Read ``noise_scale`` relative to the caption embeddings' mean norm
            (:func:`~mmembed.nn.phi.noise_std`); for encoders far from CLIP-L's scale.
        export_phi: Write ``phi.pt`` into the run folder after ``fit``.
        **kwargs: See :class:`~mmembed.lit.cir_module.ComposedRetrievalModule` (LinCIR: AdamW,
            lr 1e-4, weight decay 0.01 on every parameter, constant learning rate).

    Shapes:
        batch: text (B, L), masked (B, L) -> loss ().
    """

    def __init__(
        self,
        encoder: nn.Module,
        phi_arch: Literal["lincir", "pic2word"] = "lincir",
        phi_hidden_dim: int | None = None,
        phi_dropout: float = 0.5,
        noise_scale: float = 1.0,
        noise_relative: bool = False,
        export_phi: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder=encoder, export_encoder=export_phi, **kwargs)
        self.phi = Phi(encoder.embed_dim, encoder.text_width, phi_hidden_dim, phi_dropout, phi_arch)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.encoder]  # phi trains

    def _with_placeholder(self, masked: Tensor) -> Tensor:
        """Rows whose every ``$`` fell past the context length become ``"a photo of $"``. Shapes: (B, L)."""
        lost = ~(masked == self.encoder.special_tokens.pseudo).any(dim=1)  # (B,)
        if lost.any():
            masked = masked.clone()
            masked[lost] = self.encoder.tokenizer([FALLBACK])[0].to(masked.device)
        return masked

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad():
            target = self.encoder.encode_text(batch["text"]).embedding.float()  # (B, D): e
        sigma = noise_std(target, self.hparams.noise_scale, self.hparams.noise_relative)
        tokens = self.phi(noisy_embeddings(target, sigma).to(self.dtype))  # (B, W)
        masked = self._with_placeholder(batch["masked"])
        predicted = self.encoder.encode_text(masked, pseudo_tokens=tokens).embedding  # (B, D)
        cos = F.cosine_similarity(predicted.detach().float(), target, dim=-1).mean()
        return {"loss": lincir_loss(predicted, target), "cos": cos, "noise_std": torch.tensor(sigma)}

    def phi_metadata(self) -> dict[str, Any]:
        return {"method": "lincir", "encoder_config": getattr(self.encoder, "config", None),
                "noise_scale": self.hparams.noise_scale, "noise_relative": self.hparams.noise_relative}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # phi on its own inside the Lightning checkpoint, so Phi.load reads a .ckpt as well
        checkpoint["phi"] = self.phi.checkpoint(**self.phi_metadata())

    def export(self, directory: Path) -> list[Path]:
        path = self.phi.save(Path(directory) / "phi.pt", **self.phi_metadata())
        print(f"phi written to {path}")
        return [path]
