"""Token Selection Embedding (TSE): attention-guided local embeddings of RDE.

TSE keeps the tokens that the global token (image CLS, text EOT) attends to most in
the encoder's last block, embeds each selected token with ``FC(x) + MLP(x)`` and
max-pools them into one vector per sample. Selection produces indices only, so no
gradient flows through the attention map; the gathered token features do carry
gradient.

References:
    Qin et al., "Noisy-Correspondence Learning for Text-to-Image Person
    Re-identification", CVPR 2024, https://arxiv.org/abs/2308.09911, Sec. 3.2, Eq. 1;
    official code ``QinYang79/RDE``, ``model/CrossEmbeddingLayer_tse.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.types import EmbeddingOutput

__all__ = [
    "TSEHead", "TokenSelectionEmbedding", "gather_tokens", "select_image_tokens", "select_text_tokens",
]


def _num_selected(n_candidates: int, ratio: float) -> int:
    """``int(n_candidates * ratio)`` (the reference formula), checked to be >= 1."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"select ratio must be in (0, 1], got {ratio}")
    k = int(n_candidates * ratio)
    if k < 1:
        raise ValueError(f"ratio {ratio} selects no token out of {n_candidates}")
    return k


def _check_attention(attention: Tensor) -> None:
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise ValueError(f"attention must be (B, L, L), got {tuple(attention.shape)}")


@torch.no_grad()
def select_image_tokens(attention: Tensor, ratio: float) -> Tensor:
    """Indices of the patches the CLS token attends to most.

    Column 0 (CLS) is set to -1 so CLS is never selected; row 0 (the CLS query) is
    ranked and the top ``k = int((L - 1) * ratio)`` patches are kept, highest first.

    Args:
        attention: Last-block head-averaged attention, query x key; not modified.
        ratio: Selection ratio R (0.3 in RDE).

    Returns:
        LongTensor of token positions in ``[1, L)``, sorted by decreasing attention.

    Shapes:
        attention: (B, L, L) -> (B, k); L = 193 and R = 0.3 give k = 57.
    """
    _check_attention(attention)
    k = _num_selected(attention.shape[1] - 1, ratio)
    scores = attention.detach()[:, 0, :].clone()  # (B, L, L) -> (B, L): the CLS row
    scores[:, 0] = -1.0  # CLS column
    return scores.topk(k, dim=-1).indices  # (B, L) -> (B, k)


@torch.no_grad()
def select_text_tokens(attention: Tensor, text_ids: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """Indices of the words the EOT token attends to most, and which of them to pool.

    SOT is position 0 and EOT is ``argmax(text_ids)`` per row (EOT has the largest id
    in CLIP's vocabulary). Their columns are set to -1, the row at the EOT position is
    taken (with causal attention only EOT sees the whole caption), multiplied by
    ``text_ids != 0`` (padding -> 0) and the top ``k = int((L - 2) * ratio)`` kept.

    ``valid`` marks the first ``min(n_words, k)`` selected entries, with
    ``n_words = #(text_ids != 0) - 2``. When a caption has fewer than ``k`` words the
    remaining slots hold padding or SOT/EOT positions and are invalid. As a guard
    (a no-op for softmax attention, where every word scores > 0 = padding), an entry is
    also invalid when its position is not a word (SOT, EOT or padding), so ties at 0
    can never let padding into the pool.

    Args:
        attention: Last-block head-averaged attention, query x key; not modified.
        text_ids: Token ids, zero-padded, with SOT at position 0.
        ratio: Selection ratio R (0.3 in RDE).

    Returns:
        ``(indices, valid)``: LongTensor positions sorted by decreasing attention, and a
        bool mask of the entries to pool.

    Shapes:
        attention: (B, L, L), text_ids: (B, L) -> indices (B, k), valid (B, k);
        L = 77 and R = 0.3 give k = 22.
    """
    _check_attention(attention)
    if text_ids.shape != attention.shape[:2]:
        raise ValueError(f"text_ids {tuple(text_ids.shape)} do not match attention {tuple(attention.shape)}")
    bsz, length = text_ids.shape
    k = _num_selected(length - 2, ratio)
    rows = torch.arange(bsz, device=text_ids.device)
    eot = text_ids.argmax(dim=-1)  # (B,)
    scores = attention.detach()[rows, eot, :].clone()  # (B, L, L) -> (B, L): the EOT row
    scores[:, 0] = -1.0  # SOT column
    scores[rows, eot] = -1.0  # EOT column
    nonpad = text_ids != 0  # (B, L)
    scores = scores * nonpad.to(scores.dtype)
    indices = scores.topk(k, dim=-1).indices  # (B, L) -> (B, k)

    positions = torch.arange(length, device=text_ids.device)[None, :]  # (1, L)
    is_word = nonpad & (positions != 0) & (positions != eot[:, None])  # (B, L)
    n_words = (nonpad.sum(dim=-1) - 2).clamp(min=0, max=k)  # (B,)
    first = torch.arange(k, device=text_ids.device)[None, :] < n_words[:, None]  # (B, k)
    valid = first & is_word.gather(1, indices)  # (B, k)
    return indices, valid


def gather_tokens(tokens: Tensor, indices: Tensor, normalize: bool = True) -> Tensor:
    """Gather selected tokens and (by default) L2-normalise each one.

    Args:
        tokens: Per-token features in the joint space (gradient flows through).
        indices: Positions from :func:`select_image_tokens` / :func:`select_text_tokens`.
        normalize: L2-normalise every gathered token, as RDE does.

    Returns:
        The selected token features.

    Shapes:
        tokens: (B, L, D), indices: (B, k) -> (B, k, D).
    """
    index = indices.to(tokens.device).long()[..., None].expand(-1, -1, tokens.shape[-1])  # (B, k, D)
    picked = tokens.gather(1, index)  # (B, L, D) -> (B, k, D)
    return F.normalize(picked, dim=-1) if normalize else picked


class TSEHead(nn.Module):
    """Per-token ``FC(x) + MLP(x)`` followed by a masked max-pool over tokens.

    ``FC = Linear(in, out)``; ``MLP = Linear(in, hidden) -> BatchNorm1d(hidden) ->
    ReLU -> Linear(hidden, out)``. As in the reference code, BatchNorm sees all
    ``B * k`` selected tokens flattened, including text slots that are later masked
    out of the pool (they only affect batch statistics in train mode; RDE trains with
    BN in eval mode by default). PyTorch default initialisation.

    Args:
        in_dim: Token width (joint embedding width of the encoder, 512 for CLIP B/16).
        out_dim: Output width (1024 in RDE).
        hidden_dim: MLP hidden width; ``None`` means ``out_dim // 2``, the reference
            code's choice (equal to ``in_dim`` = 512 for the paper's 512 -> 1024).

    Shapes:
        tokens: (B, k, in_dim), valid: (B, k) or None -> (B, out_dim).
    """

    def __init__(self, in_dim: int = 512, out_dim: int = 1024, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = out_dim // 2 if hidden_dim is None else hidden_dim
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden
        self.fc = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, tokens: Tensor, valid: Tensor | None = None) -> Tensor:
        """Embed selected tokens and max-pool them.

        Args:
            tokens: Selected tokens, already gathered and L2-normalised
                (see :func:`gather_tokens`).
            valid: True for tokens to pool; ``None`` pools all of them. A row with no
                valid token (e.g. an empty caption) falls back to pooling all of its
                selected tokens, so the output stays finite (the reference code
                would fail on such a row).

        Returns:
            Pooled embedding, not normalised.

        Shapes:
            tokens: (B, k, in_dim), valid: (B, k) -> (B, out_dim).
        """
        bsz, k, dim = tokens.shape
        flat = tokens.reshape(bsz * k, dim)  # (B, k, D) -> (B*k, D)
        feats = (self.fc(flat) + self.mlp(flat)).view(bsz, k, self.out_dim)  # (B*k, D) -> (B, k, out)
        if valid is None:
            return feats.max(dim=1).values  # (B, k, out) -> (B, out)
        if valid.shape != (bsz, k):
            raise ValueError(f"valid must be {(bsz, k)}, got {tuple(valid.shape)}")
        valid = valid.to(device=feats.device, dtype=torch.bool)
        valid = valid | ~valid.any(dim=1, keepdim=True)  # empty rows pool everything
        feats = feats.masked_fill(~valid[..., None], float("-inf"))
        return feats.max(dim=1).values  # (B, k, out) -> (B, out)


class TokenSelectionEmbedding(nn.Module):
    """Image and text TSE branches on top of an encoder's token and attention outputs.

    Needs encoders that return joint-space tokens and last-block attention, e.g.
    ``OpenCLIPDualEncoder.encode_image(..., return_tokens=True, return_attention=True)``
    (image tokens: CLS first) and ``encode_text`` likewise (every text position).

    Args:
        embed_dim: Width of the encoder's token features (joint space).
        out_dim: TSE embedding width.
        select_ratio: Selection ratio R; k = int((L - 1) R) for images and
            int((L - 2) R) for text.

    Shapes:
        image tokens (B, L_i, embed_dim) -> (B, out_dim); text tokens (B, L_t, embed_dim)
        -> (B, out_dim).
    """

    def __init__(self, embed_dim: int = 512, out_dim: int = 1024, select_ratio: float = 0.3) -> None:
        super().__init__()
        if not 0.0 < select_ratio <= 1.0:
            raise ValueError(f"select_ratio must be in (0, 1], got {select_ratio}")
        self.select_ratio = select_ratio
        self.image_head = TSEHead(embed_dim, out_dim)
        self.text_head = TSEHead(embed_dim, out_dim)

    @staticmethod
    def _require(out: EmbeddingOutput, what: str) -> tuple[Tensor, Tensor]:
        if out.tokens is None or out.attention is None:
            raise ValueError(f"TSE needs {what} tokens and attention: encode with return_tokens=True, return_attention=True")
        return out.tokens, out.attention

    def encode_image(self, out: EmbeddingOutput) -> Tensor:
        """TSE image embedding (not normalised).

        Shapes:
            out.tokens: (B, L, D), out.attention: (B, L, L) -> (B, out_dim).
        """
        tokens, attention = self._require(out, "image")
        indices = select_image_tokens(attention, self.select_ratio)  # (B, k)
        return self.image_head(gather_tokens(tokens, indices))  # (B, k, D) -> (B, out)

    def encode_text(self, out: EmbeddingOutput, text_ids: Tensor) -> Tensor:
        """TSE text embedding (not normalised); padding is never pooled.

        Shapes:
            out.tokens: (B, L, D), out.attention: (B, L, L), text_ids: (B, L) -> (B, out_dim).
        """
        tokens, attention = self._require(out, "text")
        indices, valid = select_text_tokens(attention, text_ids, self.select_ratio)  # (B, k), (B, k)
        return self.text_head(gather_tokens(tokens, indices), valid)  # (B, k, D) -> (B, out)

    def forward(self, image_out: EmbeddingOutput, text_out: EmbeddingOutput, text_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Both TSE embeddings. Shapes: (B, out_dim), (B, out_dim)."""
        return self.encode_image(image_out), self.encode_text(text_out, text_ids)
