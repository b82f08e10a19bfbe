"""Candidate-list evaluation (MMEB style): every query ranks its own list of candidates.

Each query comes with ``C`` candidate embeddings, one or more of them correct. MMEB's metric,
Precision@1, is ``hit1`` here. Only one rank per query is kept, never the embeddings, so memory is
``O(queries)`` whatever the candidate count.

**Tie rule (pessimistic):** a positive is ranked after every valid negative with the same score.
MMEB's V1 ``argmax == 0`` rule takes the first maximum, so a collapsed model with constant
embeddings scores 100%; here it scores 0 hit@1 (unless every candidate is a positive).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmembed.distributed import dedupe_by_index, gather_for_eval

__all__ = ["CandidateListEvaluator"]


class CandidateListEvaluator:
    """Hit@K and MRR over per-query candidate lists (an :class:`~mmembed.eval.base.Evaluator`).

    :meth:`update` scores each query against its candidates (cosine when ``normalize``, else dot
    product) and keeps the 0-based rank of its best-ranked positive: the number of valid
    negatives whose score is ``>=`` the best positive score (ties count against the positive).
    Under torch.distributed, :meth:`compute` gathers ``(index, rank)`` from all ranks and keeps
    one row per sample index (distributed samplers pad with repeats).

    Args:
        ks: Cut-offs for ``hit{k}`` (MMEB's Precision@1 is ``hit1``).
        normalize: L2-normalise query and candidate embeddings before scoring.
    """

    def __init__(self, ks: Sequence[int] = (1,), normalize: bool = True) -> None:
        ks = tuple(int(k) for k in ks)
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be non-empty positive cut-offs, got {ks}")
        self.ks, self.normalize = ks, normalize
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._parts: list[tuple[Tensor, Tensor]] = []  # (indices (B,), ranks (B,)) per batch

    @torch.no_grad()
    def update(self, query: Tensor, candidates: Tensor, positives: Tensor, index: Tensor,
               mask: Tensor | None = None) -> None:
        """Score one batch of queries against their candidate lists and store the ranks.

        Args:
            query: Query embeddings.
            candidates: Each query's candidate embeddings (padded to a common ``C``).
            positives: True where a candidate is correct.
            index: Sample indices (used to de-duplicate across ranks).
            mask: True for real candidates, False for padding (never ranked). None: all real.

        Raises:
            ValueError: On mismatched shapes, or a query without any valid positive.

        Shapes:
            query: (B, D); candidates: (B, C, D); positives: (B, C); index: (B,); mask: (B, C).
        """
        b, c = positives.shape if positives.dim() == 2 else (-1, -1)
        if query.dim() != 2 or candidates.shape[:2] != (b, c) or candidates.shape[2:] != query.shape[1:]:
            raise ValueError(f"expected query (B, D), candidates (B, C, D), positives (B, C); got "
                             f"{tuple(query.shape)}, {tuple(candidates.shape)}, {tuple(positives.shape)}")
        if query.shape[0] != b or index.shape != (b,) or (mask is not None and mask.shape != (b, c)):
            raise ValueError(f"index must be ({b},) and mask ({b}, {c}), got {tuple(index.shape)} and "
                             f"{None if mask is None else tuple(mask.shape)}")
        q, cand = query.detach().float(), candidates.detach().float()
        if self.normalize:
            q, cand = F.normalize(q, dim=-1), F.normalize(cand, dim=-1)
        scores = torch.einsum("bd,bcd->bc", q, cand)  # (B, C)
        valid = torch.ones_like(positives, dtype=torch.bool) if mask is None else mask.bool()
        pos, neg = positives.bool() & valid, ~positives.bool() & valid  # (B, C)
        if not pos.any(dim=1).all():
            bad = index[~pos.any(dim=1)].tolist()
            raise ValueError(f"every query needs at least one unmasked positive; sample indices {bad} have none")
        best_pos = scores.masked_fill(~pos, float("-inf")).amax(dim=1, keepdim=True)  # (B, 1)
        ranks = (neg & (scores >= best_pos)).sum(dim=1)  # (B,) pessimistic: ties go before the positive
        # kept on the model's device: NCCL gathers need device tensors
        self._parts.append((index.detach().long(), ranks.long()))

    def ranks(self, gather: bool = True) -> tuple[Tensor, Tensor]:
        """Sample indices and 0-based ranks of the best positive, de-duplicated and sorted by index.

        Args:
            gather: Gather across ranks when torch.distributed is initialised; otherwise only
                de-duplicate this process's rows.

        Returns:
            ``(indices, ranks)``.

        Shapes:
            (U,), (U,) with U the number of distinct sample indices.
        """
        if not self._parts:
            raise RuntimeError("CandidateListEvaluator.compute() called before any update(): nothing to score")
        idx, rank = (torch.cat(t) for t in zip(*self._parts, strict=True))
        return gather_for_eval(idx, rank) if gather else dedupe_by_index(idx, rank)

    def compute(self, gather: bool = True) -> dict[str, float]:
        """Hit@K and MRR over everything added, in percent.

        Args:
            gather: Gather ``(index, rank)`` across ranks when torch.distributed is initialised
                (rows are de-duplicated by index either way).

        Returns:
            ``{"hit{k}": ... for k in ks, "mrr": ...}``: the share of queries whose best positive
            is in the top ``k`` and the mean reciprocal rank ``1 / (rank + 1)``, both x 100.

        Raises:
            RuntimeError: If nothing was added.
        """
        _, rank = self.ranks(gather)
        rank = rank.double()
        out = {f"hit{k}": float((rank < k).double().mean() * 100) for k in self.ks}
        out["mrr"] = float((1.0 / (rank + 1.0)).mean() * 100)
        return out
