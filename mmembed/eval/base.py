"""The evaluator interface: ``reset`` / ``update`` / ``compute``, Lightning-free.

A module feeds an evaluator during validation or test (``update`` with whatever one batch gives:
embeddings and labels, a query set's gallery or composed queries, candidate scores, generated
images) and logs ``compute()``'s flat ``{name: value}`` dict. The same object runs outside
Lightning (:func:`~mmembed.eval.evaluator.evaluate_retrieval`, notebooks, scripts), and it does its
own cross-rank gathering, so metrics are identical on every rank.

Implementations: :class:`~mmembed.eval.evaluator.RetrievalEvaluator` (one shared gallery, matches by
label), :class:`~mmembed.eval.cir.CIREvaluator` (composed retrieval, one gallery per query set,
benchmark protocols and summaries) and :class:`~mmembed.eval.candidates.CandidateListEvaluator`
(a candidate list per query, as MMEB scores). A generation evaluator (OCR accuracy, FID,
CLIPScore) implements the same three methods.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Evaluator"]


@runtime_checkable
class Evaluator(Protocol):
    """Accumulate, then score."""

    def reset(self) -> None:
        """Forget everything added so far."""
        ...

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add one batch's outputs."""
        ...

    def compute(self) -> dict[str, float]:
        """Metrics over everything added (gathered across ranks), as a flat dict."""
        ...
