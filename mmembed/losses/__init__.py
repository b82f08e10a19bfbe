"""Losses: pure functions over embeddings plus thin ``nn.Module`` wrappers."""

from mmembed.losses.contrastive import ClipLoss, InfoNCELoss, clip_loss, info_nce, nt_xent_union
from mmembed.losses.progressive import (
    ProgressiveSoftClipLoss,
    alpha_schedule,
    progressive_targets,
    soft_clip_loss,
)
from mmembed.losses.sigmoid import SigLipLoss, siglip_loss
from mmembed.losses.soft_targets import (
    SoftTargetClipLoss,
    kl_distillation,
    soft_target_clip_loss,
    soft_target_cross_entropy,
)
from mmembed.losses.token_matching import match_tokens, token_matching_loss

__all__ = [
    "ClipLoss",
    "InfoNCELoss",
    "ProgressiveSoftClipLoss",
    "SigLipLoss",
    "SoftTargetClipLoss",
    "alpha_schedule",
    "clip_loss",
    "info_nce",
    "kl_distillation",
    "match_tokens",
    "nt_xent_union",
    "progressive_targets",
    "siglip_loss",
    "soft_clip_loss",
    "soft_target_clip_loss",
    "soft_target_cross_entropy",
    "token_matching_loss",
]
