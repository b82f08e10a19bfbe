"""Masked language modelling pieces on CLIP BPE ids: BERT-style token masking and a cross-modal
MLM head (text tokens attend to image tokens, then a small transformer predicts the masked ids).

References:
    Devlin et al., "BERT", NAACL 2019 (the 80/10/10 masking rule); Jiang and Ye, "Cross-Modal
    Implicit Relation Reasoning and Aligning for Text-to-Image Person Retrieval" (IRRA),
    CVPR 2023, https://arxiv.org/abs/2303.12501, Sec. 3.3 (implicit relation reasoning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.types import SpecialTokens

IGNORE_INDEX = 0  # label of positions that are not predicted (padding is never a word)


def word_positions(ids: Tensor, special: SpecialTokens) -> Tensor:
    """True at word tokens: not padding, and below the tokenizer's first special id (so never SOT,
    EOT, a repurposed or added mask token).

    Shapes:
        ids (B, L) -> (B, L) bool.
    """
    return (ids > special.pad) & (ids < special.first_special)


def mlm_mask(
    ids: Tensor,
    prob: float,
    mask_id: int,
    vocab_max: int,
    special: SpecialTokens,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Select word tokens for masked language modelling (BERT's 80/10/10 rule).

    Each word token (:func:`word_positions`; never padding, SOT, EOT or the mask) is selected
    with probability ``prob``. A selected token becomes ``mask_id`` with probability 0.8, a
    random id in ``[1, vocab_max]`` with 0.1, and stays unchanged with 0.1. A caption with
    word tokens but none selected gets its first word token selected and masked, so every
    such caption contributes a target.

    Args:
        ids: Token ids (SOT ... EOT, zero padded).
        prob: Selection probability of a word token.
        mask_id: Id written for a masked token.
        vocab_max: Largest random replacement id.
        special: The tokenizer's special ids (which ids are words).
        generator: Optional torch generator (on the device of ``ids``).

    Returns:
        ``(masked_ids, labels)``: the input with selected tokens altered, and the original id at
        selected positions, ``IGNORE_INDEX`` (0) elsewhere.

    Shapes:
        ids: (B, L) -> (B, L), (B, L).
    """
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"prob must be in (0, 1], got {prob}")
    word = word_positions(ids, special)  # (B, L)
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    kind = torch.rand(ids.shape, generator=generator, device=ids.device)
    selected = word & (u < prob)
    # captions with words but no selection: select (and mask) the first word token
    empty = word.any(1) & ~selected.any(1)  # (B,)
    first = torch.argmax(word.to(torch.int8), dim=1)  # (B,) first word position
    forced = torch.zeros_like(selected)
    forced[empty, first[empty]] = True
    selected |= forced
    kind = torch.where(forced, torch.zeros_like(kind), kind)  # forced ones are masked
    out = ids.clone()
    out[selected & (kind < 0.8)] = mask_id
    rand_ids = torch.randint(1, vocab_max + 1, ids.shape, generator=generator, device=ids.device)
    replace = selected & (kind >= 0.8) & (kind < 0.9)
    out[replace] = rand_ids[replace].to(ids.dtype)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return out, labels


def mlm_inputs(ids: Tensor, prob: float, special: SpecialTokens) -> tuple[Tensor, Tensor, Tensor]:
    """Mask a batch for MLM (:func:`mlm_mask`) and return what a position-restricted head needs.

    Args:
        ids: Token ids (SOT ... EOT, zero padded).
        prob: Selection probability of a word token.
        special: The encoder's special ids; ``special.mask`` is written for a masked token and
            random replacements are words below it.

    Returns:
        ``(masked_ids, positions, targets)``: the altered ids, the selected positions and the
        original ids there.

    Raises:
        ValueError: If no position was selected (no caption has a word token).

    Shapes:
        ids: (B, L) -> (B, L), (B, L) bool, (M,).
    """
    if special.mask is None:
        raise ValueError("MLM needs a tokenizer with a mask token (special_tokens.mask is None)")
    masked, labels = mlm_mask(ids, prob, special.mask, min(special.max_word_id, special.mask - 1), special)
    positions = labels != IGNORE_INDEX  # every caption with words has >= 1
    if not positions.any():
        raise ValueError("MLM needs captions with word tokens; this batch has none (empty captions?)")
    return masked, positions, labels[positions]


def mlm_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy of the masked positions.

    Computing the head on the selected positions only and taking this mean is the same loss as
    a cross-entropy with ``ignore_index`` over every position.

    Shapes:
        logits (M, V), targets (M,) -> (), ().
    """
    logits = logits.float()
    return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).float().mean().detach()


class CrossModalMLMHead(nn.Module):
    """Predict masked caption tokens from the caption's tokens and the image's tokens.

    ``x = CrossAttn(LN_t(text), LN_i(image), LN_i(image))``, then a non-causal transformer
    (``depth`` blocks, ``width / 64`` heads, QuickGELU MLPs), ``LN``, and the head
    ``Linear -> QuickGELU -> LN -> Linear(vocab)``. Initialisation follows IRRA's reference
    code (CLIP's scaled normal init for the attention and MLP weights).

    Args:
        width: Token width (the joint embedding width of the encoder's projected tokens).
        depth: Transformer blocks after the cross-attention (IRRA: 4).
        vocab_size: Output vocabulary (the encoder's ``special_tokens.vocab_size``).
        heads: Attention heads; ``None`` uses ``max(1, width // 64)`` as IRRA does.

    Shapes:
        text_tokens: (B, L, D); image_tokens: (B, N, D) -> logits (B, L, V).
    """

    def __init__(self, width: int, vocab_size: int, depth: int = 4, heads: int | None = None) -> None:
        super().__init__()
        from open_clip.transformer import QuickGELU, Transformer

        heads = heads or max(1, width // 64)
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_transformer = Transformer(width, depth, heads, act_layer=QuickGELU)
        self.ln_pre_t, self.ln_pre_i, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlm_head = nn.Sequential(nn.Linear(width, width), QuickGELU(), nn.LayerNorm(width),
                                      nn.Linear(width, vocab_size))
        scale = width**-0.5
        proj_std, attn_std, fc_std = scale * (2 * depth) ** -0.5, scale, (2 * width) ** -0.5
        for block in self.cross_transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.cross_attn.in_proj_weight, std=attn_std)
        nn.init.normal_(self.cross_attn.out_proj.weight, std=proj_std)
        nn.init.normal_(self.mlm_head[0].weight, std=fc_std)
        nn.init.normal_(self.mlm_head[3].weight, std=proj_std)

    def forward(self, text_tokens: Tensor, image_tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        """Vocabulary logits per text position.

        Args:
            text_tokens: Projected tokens of the (masked) caption.
            image_tokens: Projected tokens of the image (CLS and patches).
            positions: Optional boolean mask of the positions to predict. Every position still
                attends to all others; only the vocabulary head is restricted, which gives the
                same logits there at a fraction of the cost (the head is ``D x V``).

        Shapes:
            text_tokens (B, L, D), image_tokens (B, N, D), positions (B, L) -> (B, L, V), or
            (M, V) for the M selected positions in row-major order.
        """
        image = self.ln_pre_i(image_tokens)
        x = self.cross_attn(self.ln_pre_t(text_tokens), image, image, need_weights=False)[0]
        x = self.ln_post(self.cross_transformer(x))
        return self.mlm_head(x if positions is None else x[positions])
