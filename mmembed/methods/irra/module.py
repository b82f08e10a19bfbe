"""IRRAModule: Similarity Distribution Matching + identity classification + implicit relation
reasoning (cross-modal masked language modelling) on an open_clip dual encoder.

Training: ``L = w_sdm * SDM + w_id * ID + w_mlm * MLM`` (all weights 1 in IRRA). Inference uses
only the global (CLS / EOT) cosine, so the MLM branch and the classifier are training-only.

References:
    Jiang and Ye, "Cross-Modal Implicit Relation Reasoning and Aligning for Text-to-Image Person
    Retrieval", CVPR 2023, https://arxiv.org/abs/2303.12501 (Sec. 3.2 IRR, 3.3 SDM, 3.4 ID);
    official code ``anosorae/IRRA`` (``model/build.py``, ``solver/build.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from mmembed.lit.embedding_module import EmbeddingModule
from mmembed.losses.identity import sdm
from mmembed.nn.encoders.base import TokenEmbedder
from mmembed.nn.mlm import CrossModalMLMHead, mlm_inputs, mlm_loss


def id_loss(image_logits: Tensor, text_logits: Tensor, pids: Tensor) -> Tensor:
    """IRRA's identity loss: the mean of the image and text cross-entropies over identities.

    Shapes:
        image_logits, text_logits: (B, C); pids: (B,) -> scalar.
    """
    return (F.cross_entropy(image_logits, pids) + F.cross_entropy(text_logits, pids)) / 2


class IRRAModule(EmbeddingModule):
    """IRRA on an open_clip dual encoder.

    Args:
        encoder: Dual encoder that returns projected tokens
            (:class:`mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`).
        num_classes: Number of training identities (CUHK-PEDES 11,003, ICFG-PEDES 3,102,
            RSTPReid 3,701). Checked against the training set when fitting.
        temperature: SDM temperature (IRRA: 0.02, a logit scale of 50).
        sdm_weight, id_weight, mlm_weight: Loss weights; a weight of 0 skips that term (and
            ``mlm_weight=0`` builds no MLM branch).
        mlm_prob: Probability that a caption word token is selected for MLM.
        cmt_depth: Transformer blocks of the cross-modal MLM branch.
        contrast_masked_captions: SDM and ID see the MLM-masked caption, as in the official code, whose
            masking edits the caption tokens in place (anosorae/IRRA#29, #38); one text pass then serves
            all three terms. False: SDM and ID see the clean caption (the paper's description).
        lr_factor: Learning-rate multiplier of the randomly initialised modules.
        bias_lr_factor: Learning-rate multiplier of parameters named ``*bias*`` (no weight decay).
        optimizer: Optimizer factory (IRRA: Adam).
        **kwargs: See :class:`~mmembed.lit.embedding_module.EmbeddingModule` and
            :class:`~mmembed.lit.module.TrainModule`.

    Shapes:
        training batch: image (B, C, H, W), text (B, L), label (B,) in ``[0, num_classes)``.
    """

    encoder_protocol = TokenEmbedder

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        temperature: float = 0.02,
        sdm_weight: float = 1.0,
        id_weight: float = 1.0,
        mlm_weight: float = 1.0,
        mlm_prob: float = 0.15,
        cmt_depth: int = 4,
        contrast_masked_captions: bool = False,
        lr_factor: float = 5.0,
        bias_lr_factor: float = 2.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder=encoder, optimizer=optimizer, **kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        dim = encoder.embed_dim
        self.classifier = nn.Linear(dim, num_classes) if id_weight > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        vocab = encoder.special_tokens.vocab_size if mlm_weight > 0 else 0
        self.mlm = CrossModalMLMHead(dim, vocab, depth=cmt_depth) if mlm_weight > 0 else None

    def on_train_start(self) -> None:
        datamodule = self.trainer.datamodule
        dataset = datamodule.train_dataset() if hasattr(datamodule, "train_dataset") else None
        n = getattr(dataset, "num_identities", None)
        if self.classifier is not None and n is not None and n > self.hparams.num_classes:
            raise ValueError(
                f"the training set has {n} identities but model.init_args.num_classes is "
                f"{self.hparams.num_classes}; set num_classes to {n}"
            )

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        h = self.hparams
        want_tokens = self.mlm is not None
        masked = None  # the official code masks the caption in place: every term sees the masked one
        if self.mlm is not None and h.contrast_masked_captions:
            masked = mlm_inputs(batch["text"], h.mlm_prob, self.encoder.special_tokens)
        img = self.encoder.encode_image(batch["image"], return_tokens=want_tokens)
        if masked is not None:
            txt = self.encoder.encode_text(masked[0], return_tokens=True)
        else:
            txt = self.encoder.encode_text(batch["text"])
        img_f, txt_f, pids = img.embedding.float(), txt.embedding.float(), batch["label"]
        out: dict[str, Tensor] = {}
        loss = img_f.new_zeros(())
        if h.sdm_weight > 0:
            with torch.autocast(device_type=img_f.device.type, enabled=False):  # fp32 under mixed precision too
                sim = F.normalize(txt_f, dim=-1) @ F.normalize(img_f, dim=-1).T  # text x image cosines
                out["sdm"] = sdm(sim, pids, scale=1.0 / h.temperature).mean()
            loss = loss + h.sdm_weight * out["sdm"]
        if self.classifier is not None:
            img_logits, txt_logits = self.classifier(img_f), self.classifier(txt_f)
            out["id"] = id_loss(img_logits, txt_logits, pids)
            out["img_acc"] = (img_logits.argmax(1) == pids).float().mean()
            out["txt_acc"] = (txt_logits.argmax(1) == pids).float().mean()
            loss = loss + h.id_weight * out["id"]
        if self.mlm is not None:
            if masked is not None:
                (_, positions, targets), mlm_tokens = masked, txt.tokens
            else:
                mlm_ids, positions, targets = mlm_inputs(batch["text"], h.mlm_prob, self.encoder.special_tokens)
                mlm_tokens = self.encoder.encode_text(mlm_ids, return_tokens=True).tokens  # (B, L, D)
            # the vocabulary head runs on the masked positions only (same loss as the reference's
            # cross-entropy with ignore_index over all positions)
            logits = self.mlm(mlm_tokens, img.tokens, positions=positions)  # (M, V)
            out["mlm"], out["mlm_acc"] = mlm_loss(logits, targets)
            loss = loss + h.mlm_weight * out["mlm"]
        out["loss"] = loss
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    def param_groups(self) -> list[dict[str, Any]]:
        """IRRA's per-parameter rule: ``lr * lr_factor`` for names containing ``cross``; biases at
        ``lr * bias_lr_factor`` with no weight decay; then ``classifier`` / ``mlm_head`` at
        ``lr * lr_factor`` (their biases too, still without weight decay)."""
        h = self.hparams
        factors: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            factor, decay = 1.0, True
            if "cross" in name:
                factor = h.lr_factor
            if "bias" in name:
                factor, decay = h.bias_lr_factor, False
            if "classifier" in name or "mlm_head" in name:
                factor = h.lr_factor
            factors.setdefault((factor, decay), []).append(p)
        return [{"params": ps, "lr_factor": f, **({} if decay else {"weight_decay": 0.0})}
                for (f, decay), ps in factors.items()]
