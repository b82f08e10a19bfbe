"""Contrastive losses against soft target distributions, and KL distillation.

Soft targets replace the one-hot "diagonal" of the CLIP loss with a row
distribution, e.g. label smoothing, several positives sharing an identity, or
teacher similarities. With one-hot targets :func:`soft_target_clip_loss` equals
:func:`mmembed.losses.contrastive.clip_loss`. LightCLIP's progressively softened labels are in
:mod:`mmembed.losses.progressive` (:func:`~mmembed.losses.progressive.soft_clip_loss`).

Embeddings are assumed to be L2-normalised (not normalised here).

Shapes:
    ``B`` batch, ``N`` columns, ``D`` width.

References:
    CLIP, Radford et al. 2021, https://arxiv.org/abs/2103.00020 (Fig. 3).
    Knowledge distillation, Hinton et al. 2015, https://arxiv.org/abs/1503.02531
    (Sec. 2: softened softmax and the T^2 gradient scaling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.nn.heads import LogitScale

__all__ = ["SoftTargetClipLoss", "kl_distillation", "soft_target_clip_loss", "soft_target_cross_entropy"]


def _validate_targets(targets: Tensor, atol: float, name: str = "targets") -> None:
    """Raise ValueError unless ``targets`` rows are non-negative and sum to 1."""
    if not torch.isfinite(targets).all():
        raise ValueError(f"{name} contains NaN or inf")
    if (targets < 0).any():
        raise ValueError(f"{name} must be non-negative, found min {targets.min().item():.3g}")
    sums = targets.sum(dim=-1)  # (B, N) -> (B,)
    bad = (sums - 1).abs() > atol
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"every row of {name} must sum to 1 (atol {atol}); row {row} sums to "
            f"{sums[row].item():.6g} ({int(bad.sum())} bad rows)"
        )


def soft_target_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    validate: bool = True,
    atol: float = 1e-4,
) -> Tensor:
    """Cross-entropy against a target distribution per row.

    ``loss = mean_i -sum_j targets_ij * log_softmax(logits_i)_j``.

    Args:
        logits: Unnormalised scores.
        targets: Row-stochastic targets (non-negative, rows sum to 1). Treated
            as given; detach them yourself if they come from a model.
        validate: Check the targets and raise a clear error. The check
            synchronises with the device; pass False in hot loops.
        atol: Tolerance for the row sums.

    Returns:
        Scalar mean loss.

    Shapes:
        logits ``(B, N)``, targets ``(B, N)`` -> ``()``.

    Raises:
        ValueError: On mismatched shapes or (with ``validate``) invalid targets.
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"logits and targets must both be (B, N), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if validate:
        _validate_targets(targets, atol)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()  # (B, N) -> ()


def soft_target_clip_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    targets_i2t: Tensor,
    targets_t2i: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Symmetric CLIP loss with soft targets.

    ``loss = (SCE(s * image @ text.T, targets_i2t) + SCE(s * text @ image.T, targets_t2i)) / 2``.

    Args:
        image: L2-normalised image embeddings.
        text: L2-normalised text embeddings.
        logit_scale: Multiplier ``s = 1 / temperature``.
        targets_i2t: Row ``i`` is the target distribution of image ``i`` over texts.
        targets_t2i: Row ``j`` is the target distribution of text ``j`` over
            images. If None, the transpose of ``targets_i2t`` with each row
            renormalised to sum to 1 is used (exact when ``targets_i2t`` is
            symmetric, e.g. identity-sharing targets); every column of
            ``targets_i2t`` must then have positive mass.
        validate: Validate the targets (see :func:`soft_target_cross_entropy`).

    Returns:
        Scalar loss.

    Shapes:
        image, text ``(B, D)``; targets ``(B, B)`` -> ``()``.

    References:
        https://arxiv.org/abs/2103.00020 (Fig. 3).
    """
    if targets_t2i is None:
        col_mass = targets_i2t.sum(dim=0, keepdim=True)  # (B, B) -> (1, B)
        if validate and (col_mass <= 0).any():
            raise ValueError(
                "targets_i2t has a column with zero mass, so text->image targets cannot be "
                "derived by transposition; pass targets_t2i explicitly"
            )
        targets_t2i = (targets_i2t / col_mass.clamp_min(torch.finfo(targets_i2t.dtype).tiny)).T
    logits_i2t = logit_scale * (image @ text.T)  # (B, D) x (B, D) -> (B, B)
    loss_i2t = soft_target_cross_entropy(logits_i2t, targets_i2t, validate=validate)
    loss_t2i = soft_target_cross_entropy(logits_i2t.T, targets_t2i, validate=validate)
    return 0.5 * (loss_i2t + loss_t2i)


def kl_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    detach_teacher: bool = True,
) -> Tensor:
    """Hinton distillation: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    The KL divergence is summed over the ``N`` classes and averaged over the
    ``B`` rows; the ``T^2`` factor keeps gradient magnitudes comparable across
    temperatures.

    Args:
        student_logits: Student scores.
        teacher_logits: Teacher scores.
        temperature: Softening temperature ``T > 0``.
        detach_teacher: Treat the teacher as a constant (default). Set False
            for mutual learning where both sides receive gradients.

    Returns:
        Scalar loss.

    Shapes:
        student_logits, teacher_logits ``(B, N)`` -> ``()``.

    References:
        https://arxiv.org/abs/1503.02531 (Sec. 2).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be (B, N), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if detach_teacher:
        teacher_logits = teacher_logits.detach()
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, N)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (B, N)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # (B, N) -> (B,)
    return kl.mean() * temperature**2


class SoftTargetClipLoss(nn.Module):
    """CLIP loss against soft targets, with a learnable temperature.

    Targets are defined over the local batch, so this module does not gather
    across ranks (every rank uses its in-batch columns only).

    Args:
        init_temperature: Initial temperature (scale ``1/init_temperature``).
        learn_temperature: Whether the log-scale is a trainable parameter.
        max_logit_scale: Clamp on the logit scale.
        validate_targets: Validate targets on every call (device sync).

    Shapes:
        image_emb, text_emb ``(B, D)``; targets ``(B, B)`` -> ``()``.

    References:
        https://arxiv.org/abs/2103.00020 (Fig. 3).
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        validate_targets: bool = True,
    ) -> None:
        super().__init__()
        self.logit_scale = LogitScale(init_temperature, learn_temperature, max_logit_scale)
        self.validate_targets = validate_targets

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        targets_i2t: Tensor,
        targets_t2i: Tensor | None = None,
    ) -> Tensor:
        """Return the scalar soft-target CLIP loss."""
        return soft_target_clip_loss(
            image_emb,
            text_emb,
            self.logit_scale(),
            targets_i2t,
            targets_t2i,
            validate=self.validate_targets,
        )
