"""SigLIP pairwise sigmoid loss: a pure function plus a thin module that adds gathering.

Every image-text pair is an independent binary classification: the ``B`` matching
pairs on the diagonal are positives, all other pairs are negatives. There is no
softmax over the batch, so no global normalisation is needed and the loss of a
batch split over ranks is simply the sum of per-rank blocks.

All embeddings are assumed to be L2-normalised along the last dimension, so
``a @ b.T`` is a cosine-similarity matrix. Nothing here normalises them.

Shapes:
    ``B`` local batch, ``G`` world size, ``M`` extra negative rows, ``D`` width.

References:
    SigLIP, Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training",
    https://arxiv.org/abs/2303.15343 (Algorithm 1; Sec. 3.3 for the chunked
    multi-device variant; Sec. 3.2 for the init ``t' = log 10``, ``b = -10``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.distributed import gather_with_grad, get_rank, get_world_size, is_distributed
from mmembed.nn.heads import LogitScale

__all__ = ["SigLipLoss", "siglip_loss"]


def siglip_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float,
    negatives: Tensor | None = None,
) -> Tensor:
    """SigLIP pairwise sigmoid loss of ``B`` paired embeddings (plus extra negatives).

    With ``z_ij = s * <x_i, y_j> + b`` and labels ``l_ij = +1`` if ``i == j`` else ``-1``::

        loss = -(1/B) * sum_{i, j} log sigmoid(l_ij * z_ij)
               -(1/B) * sum_{i, k} log sigmoid(-(s * <x_i, n_k> + b))

    The first sum runs over all ``B x B`` image-text pairs, the second (only when
    ``negatives`` is given) over every image against every extra text row, all of
    which are negatives. Both are divided by the local batch size ``B``, as in
    Algorithm 1 of the paper, so summing the per-rank values of a batch split over
    ``G`` ranks (each rank passing the other ranks' texts as ``negatives``) gives
    ``G`` times the loss of one process on the concatenated batch.

    Args:
        image: L2-normalised image embeddings (rows).
        text: L2-normalised text embeddings, row ``i`` paired with ``image[i]``.
        logit_scale: Multiplier ``s = exp(t')`` (0-dim tensor or float).
        logit_bias: Additive bias ``b`` (0-dim tensor or float).
        negatives: Optional L2-normalised extra text rows that are negatives for
            every image (e.g. the texts of the other ranks), or None.

    Returns:
        Scalar loss (sum over pairs divided by ``B``).

    Shapes:
        image, text ``(B, D)``; negatives ``(M, D)`` or None -> ``()``.

    References:
        https://arxiv.org/abs/2303.15343 (Algorithm 1).
    """
    if image.dim() != 2 or image.shape != text.shape:
        raise ValueError(
            f"image and text must both be (B, D), got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    rows = image.shape[0]
    if rows == 0:
        raise ValueError("siglip_loss needs a non-empty batch (B >= 1)")
    if negatives is not None and (negatives.dim() != 2 or negatives.shape[1] != image.shape[1]):
        raise ValueError(
            f"negatives must be (M, {image.shape[1]}), got {tuple(negatives.shape)}"
        )
    logits = logit_scale * (image @ text.T) + logit_bias  # (B, D) x (B, D) -> (B, B)
    labels = 2 * torch.eye(rows, dtype=logits.dtype, device=logits.device) - 1  # (B, B): +1 diag, -1 off
    total = -F.logsigmoid(labels * logits).sum()
    if negatives is not None and negatives.shape[0] > 0:
        neg_logits = logit_scale * (image @ negatives.T) + logit_bias  # (B, D) x (M, D) -> (B, M)
        total = total - F.logsigmoid(-neg_logits).sum()
    return total / rows


def _world_active(gather: bool) -> bool:
    return gather and is_distributed() and get_world_size() > 1


class SigLipLoss(nn.Module):
    """SigLIP sigmoid loss with a learnable temperature and a learnable bias.

    The temperature is a :class:`~mmembed.nn.heads.LogitScale` (stored as the log
    scale ``t'``, clamped to ``max_logit_scale``), exposed as ``logit_scale`` so
    ``loss.logit_scale()`` returns the current scale. The bias is the parameter
    ``logit_bias``. Defaults follow the paper: ``t' = log 10`` (scale 10) and
    ``b = -10``, which keeps the initial loss from being dominated by the many
    negatives.

    Without a process group this is :func:`siglip_loss` on the local batch. Under
    DDP with ``gather=True`` the texts of all ranks are gathered with
    :func:`~mmembed.distributed.gather_with_grad`; each rank scores its ``B``
    images against its own ``B`` texts (positives on the diagonal) and, as
    ``negatives``, the ``(G-1)*B`` texts of the other ranks. Summed over ranks this
    covers every pair of the ``(G*B, G*B)`` matrix exactly once, which is the
    paper's chunked (ring) variant. Each rank divides by its local ``B``, so the
    *mean* of the per-rank losses equals the single-process loss on the
    concatenated batch, and with the gather's sum-reduced backward plus DDP's
    ``1/G`` gradient averaging the gradients are exactly the single-process ones
    (same convention as :class:`~mmembed.losses.ClipLoss` with ``local_loss``).

    Args:
        init_temperature: Initial temperature (scale ``1/init_temperature``; 0.1 -> 10).
        init_bias: Initial logit bias ``b``.
        gather: Gather texts across ranks; if False every rank uses only its
            local in-batch negatives.
        max_logit_scale: Clamp on the logit scale.
        check_sizes: Gather shapes first and raise a clear error if ranks hold
            different batch sizes (debugging aid; one extra small collective).

    Shapes:
        image_emb, text_emb ``(B, D)``, L2-normalised -> ``()``.

    References:
        https://arxiv.org/abs/2303.15343 (Algorithm 1, Sec. 3.2-3.3).
    """

    def __init__(
        self,
        init_temperature: float = 0.1,
        init_bias: float = -10.0,
        gather: bool = True,
        max_logit_scale: float = 100.0,
        check_sizes: bool = False,
    ) -> None:
        super().__init__()
        self.logit_scale = LogitScale(init_temperature, learnable=True, max_scale=max_logit_scale)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))
        self.gather = gather
        self.check_sizes = check_sizes

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Return the scalar SigLIP loss for a batch of paired embeddings."""
        scale, bias = self.logit_scale(), self.logit_bias
        if not _world_active(self.gather):
            return siglip_loss(image_emb, text_emb, scale, bias)
        text_all = gather_with_grad(text_emb, check_sizes=self.check_sizes)  # (B, D) -> (G*B, D)
        rows = text_emb.shape[0]
        start = get_rank() * rows
        # the local rows enter directly as positives; the gather's backward still sums the
        # other ranks' gradients into them, so only the other ranks' rows are negatives here
        negatives = torch.cat([text_all[:start], text_all[start + rows :]])  # (G*B, D) -> ((G-1)*B, D)
        return siglip_loss(image_emb, text_emb, scale, bias, negatives=negatives)

    def extra_repr(self) -> str:  # noqa: D102
        return f"gather={self.gather}"
