"""RTD's training objective for one batch of text triplets (Lightning-free).

With the frozen anchor encoder (no gradient): the reference captions' raw embeddings ``e_r``, the
anchors ``[psi_0(T_t); e_r]`` and the pseudo tokens ``s = phi(e_r + noise * u * eps)`` (phi frozen,
in eval mode). With the trainable query encoder: the refined 2B queries of
:func:`~mmembed.methods.rtd.prompts.rtd_pairs`, ``s`` in the ``$`` slot (rows ``i`` and ``i + B``
share ``s_i``). The loss is :func:`~mmembed.losses.nt_xent_union` with a fixed temperature.

References:
    Byun et al., RTD, ICCV 2025, https://arxiv.org/abs/2406.09188 (Sec. 4.7 of the method
    specification: one training step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mmembed.data.cir import PROMPT
from mmembed.losses.contrastive import nt_xent_union
from mmembed.methods.rtd.prompts import rtd_pairs
from mmembed.methods.rtd.triplets import TextTriplet
from mmembed.nn.phi import noise_std, noisy_embeddings

__all__ = ["rtd_loss"]


def rtd_loss(
    query_encoder: nn.Module,
    anchor_encoder: nn.Module,
    phi: Callable[[Tensor], Tensor],
    triplets: Sequence[TextTriplet],
    noise_scale: float = 0.5,
    temperature: float = 0.07,
    template: str = PROMPT,
    generator: torch.Generator | None = None,
    noise_relative: bool = False,
) -> Tensor:
    """The target-anchored NT-Xent loss of one batch of B triplets (2B query-anchor pairs).

    Args:
        query_encoder: The trainable text encoder (``encode_text(ids, pseudo_tokens=...)``).
        anchor_encoder: The frozen copy: anchors and reference embeddings, under ``no_grad``.
            Passing ``query_encoder`` itself is the paper's "no anchor" ablation: anchors are
            then encoded by the trainable encoder, with gradient (references detached for phi).
        phi: The frozen projection; an ``nn.Module`` must be in eval mode (dropout off).
        triplets: The batch.
        noise_scale: Scale of the noise on the reference embedding before phi (RTD: 0.5).
        temperature: NT-Xent temperature (RTD: 0.07).
        template: The composed-query prompt.
        generator: Optional generator for the noise.
        noise_relative: Read ``noise_scale`` relative to the reference embeddings' mean norm
            (:func:`~mmembed.nn.phi.noise_std`); RTD's 0.5 is absolute.

    Returns:
        Scalar loss; gradients reach only ``query_encoder``.

    Raises:
        ValueError: If phi or a separate anchor encoder is in training mode.
    """
    shared = anchor_encoder is query_encoder
    for name, module in (("phi", phi), ("anchor_encoder", None if shared else anchor_encoder)):
        if isinstance(module, nn.Module) and module.training:
            raise ValueError(f"{name} must be in eval mode (frozen; dropout off): call .eval() on it")
    tokenizer = anchor_encoder.tokenizer
    queries, anchors_text, rows = rtd_pairs(triplets, template)
    b = len(triplets)
    anchor_device = next(anchor_encoder.parameters()).device
    with torch.set_grad_enabled(shared and torch.is_grad_enabled()):
        anchors = anchor_encoder.encode_text(tokenizer(anchors_text).to(anchor_device)).embedding  # (2B, D): T_t, T_r
    with torch.no_grad():
        reference = anchors[b:].detach()  # e_r: the raw reference-caption embeddings
        sigma = noise_std(reference, noise_scale, noise_relative)
        tokens = phi(noisy_embeddings(reference, sigma, generator))  # (B, W)
    device = next(query_encoder.parameters()).device
    q = query_encoder.encode_text(tokenizer(queries).to(device), pseudo_tokens=tokens[rows].to(device)).embedding
    return nt_xent_union(anchors.to(device), q, temperature)
