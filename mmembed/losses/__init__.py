"""Losses: pure functions over embeddings plus thin ``nn.Module`` wrappers."""

from mmembed.losses.contrastive import ClipLoss, InfoNCELoss, clip_loss, info_nce
from mmembed.losses.soft_targets import (
    SoftTargetClipLoss,
    kl_distillation,
    soft_clip_loss,
    soft_target_cross_entropy,
)

__all__ = [
    "ClipLoss",
    "InfoNCELoss",
    "SoftTargetClipLoss",
    "clip_loss",
    "info_nce",
    "kl_distillation",
    "soft_clip_loss",
    "soft_target_cross_entropy",
]
