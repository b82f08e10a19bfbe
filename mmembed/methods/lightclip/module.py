"""LightCLIPModule: CLIP training with progressively softened labels (L_ins), token-level relaxed
bipartite matching (L_tok) and masked language modelling with image fusion (L_mlm).

``L = L_ins + tok_weight * L_tok + mlm_weight * L_mlm``; every term is logged separately, with
the current softening ``alpha``, the logit scale and the MLM accuracy. Inference is plain CLIP
(global embeddings), and the exported encoder is a plain open_clip state dict: the fusion blocks
and the MLM head are training-only and live outside the encoder.

References:
    Nie et al., "LightCLIP: Learning Multi-Level Interaction for Lightweight Vision-Language
    Models", 2023, https://arxiv.org/abs/2312.00674; choices the paper leaves open follow the
    method specification's reconstruction and are options here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.lit.embedding_module import EmbeddingModule
from mmembed.losses.progressive import ProgressiveSoftClipLoss, alpha_schedule
from mmembed.losses.token_matching import MatchMode, token_matching_loss
from mmembed.methods.lightclip.fusion import FusionMLM, text_tower
from mmembed.nn.encoders.base import TokenEmbedder
from mmembed.nn.mlm import mlm_inputs, mlm_loss, word_positions


# The ablation grid of scripts/study_lightclip.py and scripts/bench_lightclip_step.py: LightCLIPModule
# overrides that switch each term on alone ("+x") or all together ("full", the method's defaults).
ABLATIONS: dict[str, dict[str, float]] = {
    "plain": {"alpha_max": 0.0, "tok_weight": 0.0, "mlm_weight": 0.0},
    "+soft": {"alpha_max": 0.2, "tok_weight": 0.0, "mlm_weight": 0.0},
    "+tok": {"alpha_max": 0.0, "tok_weight": 1.0, "mlm_weight": 0.0},
    "+mlm": {"alpha_max": 0.0, "tok_weight": 0.0, "mlm_weight": 1.0},
    "full": {"alpha_max": 0.2, "tok_weight": 1.0, "mlm_weight": 1.0},
}


class LightCLIPModule(EmbeddingModule):
    """LightCLIP on an open_clip dual encoder (ViT or timm/CNN image tower).

    Args:
        encoder: :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder` (any
            :class:`~mmembed.nn.encoders.base.TokenEmbedder`).
        loss: L_ins, a loss with a settable ``alpha`` (the softening) and a learnable ``logit_scale``:
            :class:`~mmembed.losses.progressive.ProgressiveSoftClipLoss` (None: its defaults, i.e.
            ``similarity`` softening, initial temperature 0.07 clamped at a scale of 100, local
            loss over gathered features).
        alpha_max: Final softening of the instance-level labels (0: plain CLIP loss).
        alpha_shape: Ramp from 0 to ``alpha_max`` over training: ``linear`` or ``cosine``.
        tok_weight: Weight of L_tok (0 disables it).
        tok_tau: Temperature of the per-word softmax over patches.
        tok_r: Patches per word in the relaxed matching (None: ``max(1, P // M)``).
        tok_mode: ``relaxed``, ``strict`` or ``argmax`` (FILIP-style) matching.
        mlm_weight: Weight of L_mlm (0: no MLM branch).
        mlm_prob: Share of caption words selected for MLM (BERT 80/10/10 rule).
        mask_token: ``extra`` adds a train-only ``<mask>`` row to the token embedding (the
            encoder's ``add_mask_token``; it pools text at the first EOT and drops the row again on
            export); ``reuse`` writes the encoder's repurposed mask id (CLIP: the last BPE merge)
            and leaves the encoder untouched.
        num_fusions: Fusion blocks K (after text layers ``ceil(k L / K)``).
        fuse_image: Let the MLM pass attend to image stages (False: text-only MLM ablation).
        mlm_bidirectional: Drop the text tower's causal mask in the MLM pass only (a causal
            tower otherwise predicts a masked word from the words before it). A tower built with
            ``text_cfg.no_causal_mask: true`` is bidirectional in both passes.
        **kwargs: See :class:`~mmembed.lit.embedding_module.EmbeddingModule` and
            :class:`~mmembed.lit.module.TrainModule`.

    Shapes:
        training batch: image (B, 3, H, W), text (B, L).
    """

    encoder_protocol = TokenEmbedder

    def __init__(
        self,
        encoder: nn.Module,
        loss: nn.Module | None = None,
        alpha_max: float = 0.2,
        alpha_shape: Literal["linear", "cosine"] = "linear",
        tok_weight: float = 1.0,
        tok_tau: float = 0.1,
        tok_r: int | None = None,
        tok_mode: MatchMode = "relaxed",
        mlm_weight: float = 1.0,
        mlm_prob: float = 0.15,
        mask_token: Literal["extra", "reuse"] = "extra",
        num_fusions: int = 3,
        fuse_image: bool = True,
        mlm_bidirectional: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= alpha_max <= 1.0:
            raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
        if mask_token not in ("extra", "reuse"):
            raise ValueError(f"mask_token must be 'extra' or 'reuse', got {mask_token!r}")
        loss = ProgressiveSoftClipLoss() if loss is None else loss
        if not hasattr(loss, "alpha") or not isinstance(getattr(loss, "logit_scale", None), nn.Module):
            raise TypeError(f"LightCLIP's loss needs a settable alpha and a learnable logit_scale "
                            f"(e.g. mmembed.losses.ProgressiveSoftClipLoss), got {type(loss).__name__}")
        super().__init__(encoder=encoder, loss=loss, **kwargs)
        if mlm_weight > 0 and mask_token == "extra":
            encoder.add_mask_token()  # before the head ties itself to the embedding; special_tokens.mask is its id
        self.mask_id = encoder.special_tokens.mask if mlm_weight > 0 else None  # the id MLM writes
        self.mlm = (FusionMLM.from_encoder(encoder, num_fusions, fuse_image, mlm_bidirectional)
                    if mlm_weight > 0 else None)
        self._prefix_tokens = encoder.num_prefix_tokens  # tokens ahead of the patches (a class token)

    def current_alpha(self) -> float:
        """The softening at this step: ``alpha_schedule(step / total_steps)`` (0 outside training)."""
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return 0.0
        total = max(1, int(trainer.estimated_stepping_batches))
        return alpha_schedule(self.global_step / total, self.hparams.alpha_max, self.hparams.alpha_shape)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        h = self.hparams
        ids = batch["text"]
        need_tokens = h.tok_weight > 0
        fuse = self.mlm is not None and h.fuse_image
        # one image forward serves L_ins, L_tok and the fusion stages of L_mlm (the unmasked image)
        img = self.encoder.encode_image(batch["image"], return_tokens=need_tokens,
                                        return_stages=len(self.mlm.depths) if fuse else 0)
        txt = self.encoder.encode_text(ids, return_tokens=need_tokens)
        image, text = F.normalize(img.embedding.float(), dim=-1), F.normalize(txt.embedding.float(), dim=-1)
        alpha = self.current_alpha()
        self.loss.alpha = alpha
        out: dict[str, Tensor] = {"ins": self.loss(image, text)}
        total = out["ins"]
        if need_tokens:
            words = txt.mask & word_positions(ids, self.encoder.special_tokens)  # (B, L): no SOT / EOT / padding / mask
            patches = img.tokens[:, self._prefix_tokens:]  # (B, P, D)
            out["tok"], out["tok_cos"] = token_matching_loss(txt.tokens, patches, words, h.tok_tau, h.tok_r,
                                                             h.tok_mode, return_matched_cosine=True)
            total = total + h.tok_weight * out["tok"]
        if self.mlm is not None:
            masked, positions, targets = mlm_inputs(ids, h.mlm_prob, self.encoder.special_tokens)
            stages = img.stages if fuse else []
            logits = self.mlm(text_tower(self.encoder), masked, stages, positions=positions)  # (M, V)
            out["mlm"], out["mlm_acc"] = mlm_loss(logits, targets)
            total = total + h.mlm_weight * out["mlm"]
        out = {k: v.detach() for k, v in out.items()}
        out["loss"] = total
        out["alpha"] = torch.tensor(alpha)
        out["logit_scale"] = self.loss.logit_scale().detach()
        return out
