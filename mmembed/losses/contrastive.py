"""Contrastive losses: pure functions plus thin modules that add gathering.

The functions (:func:`info_nce`, :func:`clip_loss`) keep no state and make no
distributed calls. The modules (:class:`ClipLoss`, :class:`InfoNCELoss`) own a
:class:`~mmembed.nn.heads.LogitScale`, gather across ranks with
:func:`mmembed.distributed.gather_with_grad` and call the functions.

All embeddings are assumed to be L2-normalised along the last dimension, so
``a @ b.T`` is a cosine-similarity matrix. Nothing here normalises them.

Shapes:
    ``B`` local batch, ``G`` world size, ``N``/``M`` number of columns, ``D`` width.

References:
    CLIP, Radford et al. 2021, https://arxiv.org/abs/2103.00020 (Fig. 3, the
    symmetric cross-entropy over the scaled similarity matrix).
    InfoNCE, van den Oord et al. 2018, https://arxiv.org/abs/1807.03748 (Eq. 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.distributed import gather_with_grad, get_rank, get_world_size, is_distributed
from mmembed.nn.heads import LogitScale

__all__ = ["ClipLoss", "InfoNCELoss", "clip_loss", "info_nce", "nt_xent_union"]


def info_nce(
    query: Tensor,
    candidates: Tensor,
    targets: Tensor,
    logit_scale: Tensor | float,
) -> Tensor:
    """InfoNCE: cross-entropy of each query against all candidates.

    ``loss = mean_i -log softmax_j(s * <q_i, c_j>)[targets_i]``.

    Args:
        query: L2-normalised query embeddings.
        candidates: L2-normalised candidate embeddings (positives and negatives).
        targets: Index of each query's positive among ``candidates``.
        logit_scale: Multiplier ``s = 1 / temperature`` (0-dim tensor or float).

    Returns:
        Scalar mean loss.

    Shapes:
        query ``(B, D)``, candidates ``(N, D)``, targets ``(B,)`` long -> ``()``.

    References:
        https://arxiv.org/abs/1807.03748 (Eq. 4).
    """
    if query.dim() != 2 or candidates.dim() != 2 or query.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"expected query (B, D) and candidates (N, D), got {tuple(query.shape)} "
            f"and {tuple(candidates.shape)}"
        )
    if targets.shape != (query.shape[0],):
        raise ValueError(f"targets must have shape ({query.shape[0]},), got {tuple(targets.shape)}")
    logits = logit_scale * (query @ candidates.T)  # (B, D) x (N, D) -> (B, N)
    return F.cross_entropy(logits, targets)


def nt_xent_union(anchors: Tensor, queries: Tensor, temperature: float = 0.07) -> Tensor:
    """NT-Xent over the union of two views (SimCLR; PALAVRA, SEARLE and RTD use it).

    With ``Z = [a_1..a_N, q_1..q_N]`` L2-normalised, every one of the 2N rows is classified
    against the other 2N - 1 (its partner ``a_i <-> q_i`` is the positive):
    ``l(z) = -log exp(z . p(z) / t) / sum_{y != z} exp(z . y / t)``, averaged over the 2N rows. The
    denominator holds cross terms and same-side terms; with frozen anchors the anchor-anchor
    terms are constants.

    Args:
        anchors: One side (e.g. frozen-encoder targets); normalised here.
        queries: The other side; normalised here.
        temperature: Fixed temperature (RTD: 0.07).

    Returns:
        Scalar mean loss.

    Shapes:
        anchors (N, D), queries (N, D) -> ().

    References:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
        ICML 2020, https://arxiv.org/abs/2002.05709 (Eq. 1).
    """
    if anchors.shape != queries.shape or anchors.dim() != 2:
        raise ValueError(f"anchors and queries must both be (N, D), got {tuple(anchors.shape)} and {tuple(queries.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = anchors.shape[0]
    z = F.normalize(torch.cat([anchors, queries]).float(), dim=-1)  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N)
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # a_i <-> q_i
    return F.cross_entropy(logits, partner)


def clip_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    image_all: Tensor | None = None,
    text_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """Symmetric CLIP loss of the local rows against all columns.

    ``loss = (CE(s * image @ text_all.T, t) + CE(s * text @ image_all.T, t)) / 2``
    with ``t = arange(B) + offset``. With ``image_all = text_all = None`` the
    columns are the local batch and this is the ordinary single-process CLIP
    loss. In the distributed "local loss" scheme, ``*_all`` are the gathered
    embeddings of all ranks and ``offset = rank * B`` locates this rank's pairs.

    Args:
        image: L2-normalised local image embeddings (rows).
        text: L2-normalised local text embeddings (rows), paired with ``image``.
        logit_scale: Multiplier ``s = 1 / temperature`` (0-dim tensor or float).
        image_all: L2-normalised image columns for text->image, or None.
        text_all: L2-normalised text columns for image->text, or None.
        offset: Column index of the first local pair in ``*_all``.

    Returns:
        Scalar loss, the mean of the image->text and text->image cross-entropies.

    Shapes:
        image, text ``(B, D)``; image_all, text_all ``(M, D)`` with
        ``offset + B <= M`` -> ``()``.

    References:
        https://arxiv.org/abs/2103.00020 (Fig. 3).
    """
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(
            f"image and text must both be (B, D), got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    if (image_all is None) != (text_all is None):
        raise ValueError("pass both image_all and text_all, or neither")
    if image_all is None or text_all is None:
        image_all, text_all = image, text
    if image_all.shape != text_all.shape or image_all.shape[1] != image.shape[1]:
        raise ValueError(
            f"image_all and text_all must both be (M, {image.shape[1]}), got "
            f"{tuple(image_all.shape)} and {tuple(text_all.shape)}"
        )
    rows = image.shape[0]
    if offset < 0 or offset + rows > image_all.shape[0]:
        raise ValueError(f"offset {offset} + B {rows} exceeds the {image_all.shape[0]} columns")
    targets = torch.arange(rows, device=image.device) + offset  # (B,)
    logits_i2t = logit_scale * (image @ text_all.T)  # (B, D) x (M, D) -> (B, M)
    logits_t2i = logit_scale * (text @ image_all.T)  # (B, D) x (M, D) -> (B, M)
    return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))


def _world_active(gather: bool) -> bool:
    return gather and is_distributed() and get_world_size() > 1


class ClipLoss(nn.Module):
    """CLIP image-text contrastive loss with a learnable temperature.

    Without a process group this is :func:`clip_loss` on the local batch. Under
    DDP with ``gather=True`` the embeddings of all ranks are gathered with
    :func:`~mmembed.distributed.gather_with_grad`, so every rank's pairs see all
    ``G*B`` negatives, and the two modes give the same loss and gradients as a
    single process on the concatenated batch (after DDP's gradient averaging):

    * ``local_loss=True`` (default): each rank scores its ``B`` rows against all
      ``G*B`` columns with targets ``arange(B) + rank*B``. The mean of the per-rank
      losses is the single-process loss; the gather's sum-reduced backward sends
      each rank the gradient all ranks' losses put on its rows, and DDP's ``1/G``
      averaging completes the exact single-process gradient.
    * ``local_loss=False``: each rank computes the full ``(G*B, G*B)`` loss on the
      gathered tensors, which equals the single-process loss on every rank. Every
      rank's gradient w.r.t. the gathered matrix is identical, so the gather's
      sum-reduced backward hands each rank ``G`` times the true gradient of its
      rows, and DDP's ``1/G`` averaging cancels it exactly. No extra scaling is
      needed, but the logits cost ``O((G*B)^2)`` per rank.

    Local is the default because it computes only ``B x G*B`` logits per rank
    (``G`` times less compute and memory than the global matrix) for the same
    gradient, which is what large CLIP runs use (open_clip#894).

    Args:
        init_temperature: Initial temperature (scale ``1/init_temperature``).
        learn_temperature: Whether the log-scale is a trainable parameter.
        max_logit_scale: Clamp on the logit scale (CLIP uses 100).
        local_loss: Local rows vs. all columns (True) or the full gathered
            matrix on every rank (False).
        gather: Gather embeddings across ranks; if False every rank uses only
            its local in-batch negatives.
        check_sizes: Gather shapes first and raise a clear error if ranks hold
            different batch sizes (debugging aid; one extra small collective).

    Shapes:
        image_emb, text_emb ``(B, D)``, L2-normalised -> ``()``.

    References:
        https://arxiv.org/abs/2103.00020 (Fig. 3, Sec. 2.5).
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        local_loss: bool = True,
        gather: bool = True,
        check_sizes: bool = False,
    ) -> None:
        super().__init__()
        self.logit_scale = LogitScale(init_temperature, learn_temperature, max_logit_scale)
        self.local_loss = local_loss
        self.gather = gather
        self.check_sizes = check_sizes

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Return the scalar CLIP loss for a batch of paired embeddings."""
        scale = self.logit_scale()
        if not _world_active(self.gather):
            return clip_loss(image_emb, text_emb, scale)
        image_all = gather_with_grad(image_emb, check_sizes=self.check_sizes)  # (G*B, D)
        text_all = gather_with_grad(text_emb, check_sizes=self.check_sizes)  # (G*B, D)
        if self.local_loss:
            offset = get_rank() * image_emb.shape[0]
            return clip_loss(image_emb, text_emb, scale, image_all, text_all, offset=offset)
        return clip_loss(image_all, text_all, scale)


class InfoNCELoss(nn.Module):
    """Query->candidate InfoNCE; queries stay local, candidates are gathered.

    The local ``candidate`` tensor holds the ``B`` positives first (row ``i`` is
    the positive of query ``i``), optionally followed by extra negatives (e.g.
    hard negatives), ``M >= B`` rows in total. Under DDP the candidates of all
    ranks are gathered to ``(G*M, D)`` and the targets are ``arange(B) + rank*M``
    (``= rank*B`` in the usual case ``M = B``). With ``M = B`` the mean of the
    per-rank losses and the DDP-averaged gradients equal the single-process loss
    on the concatenated batch (see :func:`~mmembed.distributed.gather_with_grad`).

    Args:
        init_temperature: Initial temperature (scale ``1/init_temperature``).
        learn_temperature: Whether the log-scale is a trainable parameter.
        max_logit_scale: Clamp on the logit scale.
        gather_candidates: Gather candidates across ranks (more negatives).
        check_sizes: Gather shapes first and raise a clear error if ranks hold
            different batch sizes (debugging aid).

    Shapes:
        query ``(B, D)``, candidate ``(M, D)`` with ``M >= B``, L2-normalised -> ``()``.

    References:
        https://arxiv.org/abs/1807.03748 (Eq. 4).
    """

    def __init__(
        self,
        init_temperature: float = 0.05,
        learn_temperature: bool = False,
        max_logit_scale: float = 100.0,
        gather_candidates: bool = True,
        check_sizes: bool = False,
    ) -> None:
        super().__init__()
        self.logit_scale = LogitScale(init_temperature, learn_temperature, max_logit_scale)
        self.gather_candidates = gather_candidates
        self.check_sizes = check_sizes

    def forward(self, query: Tensor, candidate: Tensor) -> Tensor:
        """Return the scalar InfoNCE loss of local queries against (gathered) candidates."""
        rows, cols = query.shape[0], candidate.shape[0]
        if cols < rows:
            raise ValueError(f"candidate needs at least B={rows} rows (positives first), got {cols}")
        offset = 0
        if _world_active(self.gather_candidates):
            candidate = gather_with_grad(candidate, check_sizes=self.check_sizes)  # (G*M, D)
            offset = get_rank() * cols
        targets = torch.arange(rows, device=query.device) + offset  # (B,)
        return info_nce(query, candidate, targets, self.logit_scale())
