"""Forward passes through open_clip towers that return more than open_clip's own: per-block attention,
the outputs of the last blocks, and per-location tokens of timm image towers. Used by
:class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["run_block", "run_transformer", "timm_tokens"]


def run_block(block: nn.Module, x: Tensor, attn_mask: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
    """Run one open_clip residual block, optionally returning head-averaged attention."""
    if not need_weights:
        return block(x, attn_mask=attn_mask), None
    if not hasattr(block, "ln_1") or not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise NotImplementedError(
            f"attention maps need a standard open_clip ResidualAttentionBlock, got {type(block).__name__}"
        )
    y = block.ln_1(x)
    mask = attn_mask.to(y.dtype) if attn_mask is not None else None
    out, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=True, attn_mask=mask)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights  # (B, L, D), (B, L, L)


def run_transformer(
    transformer: nn.Module, x: Tensor, attn_mask: Tensor | None, return_attention: bool, keep_last: int = 0
) -> tuple[Tensor, Tensor | None, list[Tensor]]:
    """Run the blocks; returns the output, the last block's attention (if asked) and the
    batch-first outputs of the last ``keep_last`` blocks."""
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    blocks = list(transformer.resblocks)
    if keep_last > len(blocks):
        raise ValueError(f"asked for the last {keep_last} blocks of a {len(blocks)}-block tower")
    attn, hidden = None, []
    for i, block in enumerate(blocks):
        x, w = run_block(block, x, attn_mask, return_attention and i == len(blocks) - 1)
        attn = w if w is not None else attn
        if i >= len(blocks) - keep_last:
            hidden.append(x if batch_first else x.transpose(0, 1))
    if not batch_first:
        x = x.transpose(0, 1)
    return x, attn, hidden


def timm_tokens(visual: nn.Module, feats: Tensor) -> Tensor:
    """Per-location tokens of a timm tower in the joint space.

    CNN maps: every location goes through the trunk's own head (pooling a 1x1 map is the
    identity) and then open_clip's head, as if it were the whole image. With average pooling
    and a linear head the tokens' mean is the global embedding exactly; with a nonlinear head
    (mobilenetv3's conv head, ``timm_proj=None``) they are in the same space but their mean
    is not. Token sequences (timm ViTs) and attention-pooled CNNs get open_clip's
    dropout / projection layers only.

    Shapes:
        feats: (B, C, h, w) or (B, L, C) -> (B, h*w or L, D).
    """
    layers = dict(visual.head.named_children())
    if feats.ndim == 4 and "pool" not in layers:
        b, c, h, w = feats.shape
        cells = feats.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)  # (B*h*w, C, 1, 1)
        return visual.head(visual.trunk.forward_head(cells)).reshape(b, h * w, -1)
    if feats.ndim == 4:  # (B, C, h, w) -> (B, h*w, C)
        feats = feats.flatten(2).transpose(1, 2)
    for name in ("drop", "proj", "mlp"):
        if name in layers:
            feats = layers[name](feats)  # (B, L, C) -> (B, L, D)
    return feats
