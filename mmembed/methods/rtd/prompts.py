"""Composed-query prompts and RTD's refined batch of (query, anchor) texts.

Every projection method and RTD encode a composed query as ``"a photo of $ that {text}"``, with the
projected reference in the ``$`` slot (:meth:`OpenCLIPDualEncoder.encode_text` with
``pseudo_tokens``). FashionIQ's two captions are joined in both orders and the two query
embeddings averaged.

RTD's refined batch sampling turns B text triplets into 2B pairs: rows ``i < B`` are the composed
query (``"a photo of $ that {T_c}"``) against the frozen encoder's target caption ``T_t``; rows
``i >= B`` are the reference-only query (``"a photo of $"``) against the reference caption ``T_r``.
Rows ``i`` and ``i + B`` share the same pseudo token, so each composed query has its own reference
caption as a hard negative.

References:
    Byun et al., RTD, ICCV 2025, https://arxiv.org/abs/2406.09188 (refined concatenation and batch
    sampling); Baldrati et al., SEARLE, ICCV 2023 (the prompt and FashionIQ's two orders).
"""

from __future__ import annotations

from collections.abc import Sequence

from mmembed.data.cir import PROMPT, composed_prompt, fashioniq_prompts
from mmembed.methods.rtd.triplets import TextTriplet

__all__ = ["PROMPT", "REFERENCE_ONLY", "composed_prompt", "fashioniq_prompts", "rtd_pairs"]

REFERENCE_ONLY = "a photo of $"


def rtd_pairs(triplets: Sequence[TextTriplet], template: str = PROMPT) -> tuple[list[str], list[str], list[int]]:
    """RTD's 2B (query, anchor) texts for B triplets, in the refined order.

    Returns:
        ``(queries, anchors, reference_row)``: the query prompts (for the trainable encoder,
        pseudo token in ``$``), the anchor captions (for the frozen encoder), and for each of
        the 2B rows the triplet whose reference gives its pseudo token (``i mod B``).
    """
    queries = [composed_prompt(t.conditioning, template) for t in triplets] + [REFERENCE_ONLY] * len(triplets)
    anchors = [t.target for t in triplets] + [t.reference for t in triplets]
    rows = list(range(len(triplets))) * 2
    return queries, anchors, rows
