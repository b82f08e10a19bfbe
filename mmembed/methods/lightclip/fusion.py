"""LightCLIP's masked-language-modelling branch with image fusion (L_mlm).

A second pass of the (shared) text tower runs on the masked caption. After text layers
``l_1 < ... < l_K`` (default ``ceil(k L / K)``) a fusion block lets the text attend to one stage
of the *unmasked* image, shallow stages first: ``h <- h + XAttn(LN(h), LN(A_k V_k))`` then
``h <- h + MLP(LN(h))``, with ``A_k`` a linear adapter from the stage's channels to the text
width. The head is ``Linear -> GELU -> LN -> Linear(vocab)`` whose output weight is tied to the
token embedding. The contrastive pass never sees masks or fusion, so inference is plain CLIP,
and none of this is part of the exported encoder.

References:
    Nie et al., "LightCLIP", 2023, https://arxiv.org/abs/2312.00674 (MLM with image fusion);
    placement, widths and the tied head follow the method specification's reconstruction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FusionBlock", "FusionMLM", "fusion_depths", "image_stages", "text_tower"]


def fusion_depths(num_layers: int, num_fusions: int) -> list[int]:
    """Text layers (1-based) after which fusion block ``k`` runs: ``ceil(k L / K)``, k = 1..K.

    Shapes:
        -> K non-decreasing layer indices in [1, L].
    """
    if not 1 <= num_fusions <= num_layers:
        raise ValueError(f"num_fusions must be in [1, {num_layers}] (the text depth), got {num_fusions}")
    return [math.ceil(k * num_layers / num_fusions) for k in range(1, num_fusions + 1)]


def image_stages(encoder: nn.Module, images: Tensor, num_stages: int) -> list[Tensor]:
    """Token features of the image tower's last ``num_stages`` stages, shallow to deep.

    ViT towers (open_clip) give the outputs of their last blocks without the class token;
    timm towers (CNNs included) give ``forward_intermediates`` feature maps, flattened. Training
    takes them from the contrastive forward (``encode_image(..., return_stages=K)``); this is
    the same call on its own.

    Args:
        encoder: :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`.
        images: Normalised images.
        num_stages: How many stages (the last ones).

    Shapes:
        images (B, 3, H, W) -> list of (B, N_k, C_k).
    """
    return list(encoder.encode_image(images, return_stages=num_stages).stages)


class FusionBlock(nn.Module):
    """Text-to-image cross-attention plus MLP, both residual and pre-norm.

    Args:
        width: Text width.
        heads: Attention heads (the text tower's).
        stage_dim: Channels of the image stage it attends to.
        mlp_ratio: MLP expansion.

    Shapes:
        text (B, L, W), stage (B, N, C) -> (B, L, W).
    """

    def __init__(self, width: int, heads: int, stage_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.adapter = nn.Linear(stage_dim, width)
        self.ln_q, self.ln_kv, self.ln_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, text: Tensor, stage: Tensor) -> Tensor:
        kv = self.ln_kv(self.adapter(stage))
        text = text + self.attn(self.ln_q(text), kv, kv, need_weights=False)[0]
        return text + self.mlp(self.ln_mlp(text))


def text_tower(encoder: nn.Module) -> nn.Module:
    """The CLIP-style text transformer of an open_clip model (``CLIP`` or ``CustomTextCLIP``)."""
    tower = encoder.text_tower
    if not hasattr(tower, "token_embedding") or getattr(tower, "cls_emb", None) is not None:
        raise NotImplementedError("the MLM branch needs a CLIP-style text transformer")
    return tower


class FusionMLM(nn.Module):
    """The MLM branch: masked text pass with fusion blocks, and a head tied to the token embedding.

    The text tower is shared with the contrastive model and passed to :meth:`forward`, so this
    module holds only the fusion blocks and the head (the train-only parameters).

    Args:
        width: Text width.
        heads: Text attention heads.
        num_layers: Text depth L.
        vocab_size: Rows of the token embedding.
        stage_dims: Channels of the K image stages, shallow to deep (K fusion blocks).
        fuse_image: Attend to image stages (False: plain text MLM, the "fusion off" ablation).
        bidirectional: Run the masked pass without the tower's causal mask (every position sees
            the whole caption); False keeps the tower's own mask.

    Shapes:
        forward: masked_ids (B, L), stages list of (B, N_k, C_k) -> logits (B, L, V), or (M, V)
        for the M positions selected by ``positions``.
    """

    def __init__(self, width: int, heads: int, num_layers: int, vocab_size: int, stage_dims: list[int],
                 fuse_image: bool = True, bidirectional: bool = False) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.depths = fusion_depths(num_layers, len(stage_dims))
        self.fuse_image = fuse_image
        self.fusions = nn.ModuleList(FusionBlock(width, heads, d) for d in stage_dims) if fuse_image else nn.ModuleList()
        self.dense, self.act, self.ln = nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    @classmethod
    def from_encoder(cls, encoder: nn.Module, num_fusions: int = 3, fuse_image: bool = True,
                     bidirectional: bool = False) -> FusionMLM:
        """Size the branch for an :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`
        (image stage widths come from one dummy forward)."""
        tower = text_tower(encoder)
        was_training = encoder.training
        with torch.no_grad():
            dummy = torch.zeros(1, 3, *encoder.image_size)
            try:
                dims = [st.shape[-1] for st in image_stages(encoder.eval(), dummy, num_fusions)]
            except (ValueError, IndexError) as err:
                raise ValueError(f"{num_fusions} fusion blocks need {num_fusions} image stages: {err}. Lower "
                                 "num_fusions or use a deeper image tower.") from err
        encoder.train(was_training)
        vocab, width = tower.token_embedding.weight.shape
        return cls(width, tower.transformer.resblocks[0].attn.num_heads, len(tower.transformer.resblocks),
                   vocab, dims, fuse_image, bidirectional)

    def forward(self, tower: nn.Module, masked_ids: Tensor, stages: list[Tensor],
                positions: Tensor | None = None) -> Tensor:
        cast = tower.transformer.get_cast_dtype()
        seq_len = masked_ids.shape[1]
        x = tower.token_embedding(masked_ids).to(cast) + tower.positional_embedding[:seq_len].to(cast)  # (B, L, W)
        causal = tower.attn_mask is not None and not self.bidirectional
        mask = tower.attn_mask[:seq_len, :seq_len] if causal else None
        batch_first = getattr(tower.transformer, "batch_first", True)
        for layer, block in enumerate(tower.transformer.resblocks, start=1):
            x = block(x if batch_first else x.transpose(0, 1), attn_mask=mask)
            x = x if batch_first else x.transpose(0, 1)
            if self.fuse_image:
                for k, depth in enumerate(self.depths):
                    if depth == layer:
                        x = self.fusions[k](x, stages[k].to(x.dtype))
        x = tower.ln_final(x)
        if positions is not None:
            x = x[positions]
        h = self.ln(self.act(self.dense(x)))
        return h @ tower.token_embedding.weight.T + self.bias  # output weight tied to the token embedding
