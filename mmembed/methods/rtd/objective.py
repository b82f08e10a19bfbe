"""RTD's training objective (a pure function of embeddings).

The module (:class:`~mmembed.methods.rtd.module.RTD`) encodes one batch of B text triplets: with
the frozen anchor encoder (no gradient) the anchors ``[psi_0(T_t); e_r]`` (target captions, then
the reference captions' raw embeddings ``e_r``), and with the trainable query encoder the refined
2B queries of :func:`~mmembed.methods.rtd.prompts.rtd_pairs` with ``s = phi(e_r + noise)`` in the
``$`` slot (rows ``i`` and ``i + B`` share ``s_i``). The loss is the target-anchored NT-Xent over
the union of both sets (:func:`~mmembed.losses.nt_xent_union`) at a fixed temperature.

References:
    Byun et al., RTD, ICCV 2025, https://arxiv.org/abs/2406.09188 (Sec. 4.7 of the method
    specification: one training step).
"""

from __future__ import annotations

from torch import Tensor

from mmembed.losses.contrastive import nt_xent_union

__all__ = ["rtd_loss"]


def rtd_loss(anchors: Tensor, queries: Tensor, temperature: float = 0.07) -> Tensor:
    """The target-anchored NT-Xent loss of one batch (2B query-anchor pairs).

    Args:
        anchors: Anchor embeddings ``[target captions; reference captions]`` (frozen encoder, or
            the trainable one in the "no anchor" ablation), not normalised.
        queries: The refined composed queries from the trainable encoder, row ``i`` paired with
            anchor ``i``, not normalised.
        temperature: NT-Xent temperature (RTD: 0.07, fixed).

    Returns:
        Scalar loss.

    Shapes:
        anchors (2B, D), queries (2B, D) -> ().
    """
    if anchors.shape != queries.shape or anchors.ndim != 2 or anchors.shape[0] % 2:
        raise ValueError(f"anchors and queries must both be (2B, D), got {tuple(anchors.shape)} and "
                         f"{tuple(queries.shape)}")
    return nt_xent_union(anchors, queries, temperature)
