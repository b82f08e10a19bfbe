"""Test-server submission files for CIRR and CIRCO, from query-gallery scores.

* CIRR: ``{prefix}_recall.json`` = ``{"version": "rc2", "metric": "recall", "<pairid>": [top-50
  names]}`` with the reference removed from each ranking, and ``{prefix}_recall_subset.json`` =
  ``{"version": "rc2", "metric": "recall_subset", "<pairid>": [top-3 names]}`` ranked within the
  query's image set without the reference.
* CIRCO: ``{"<query id>": [top-50 image ids as strings]}``.

Ties rank the lower gallery position first, as in :mod:`mmembed.metrics.cir`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from mmembed.data.cir import CIRSplit

__all__ = ["circo_submission", "cirr_submission", "top_k_positions"]


def top_k_positions(row: Tensor, k: int, exclude: int | None = None, among: list[int] | None = None) -> list[int]:
    """The ``k`` best gallery positions of one score row, ties to the lower position.

    Args:
        row: Scores of one query against the gallery.
        k: How many to return.
        exclude: A position left out (CIRR: the reference).
        among: Rank only these positions (CIRR's subset), duplicates counted once.

    Shapes:
        row (G,) -> a list of at most ``k`` positions.
    """
    candidates = torch.tensor(among, dtype=torch.long) if among is not None else torch.arange(row.shape[0])
    if exclude is not None:
        candidates = candidates[candidates != exclude]
    candidates = torch.unique(candidates)  # ascending: stable sort keeps the lower position first on ties
    order = torch.sort(row[candidates].float(), descending=True, stable=True).indices[:k]
    return candidates[order].tolist()


def _check(scores: Tensor, split: CIRSplit) -> None:
    expected = (len(split.queries), len(split.gallery_names))
    if tuple(scores.shape) != expected:
        raise ValueError(f"scores must be (queries, gallery) = {expected}, got {tuple(scores.shape)}")


def cirr_submission(scores: Tensor, split: CIRSplit, prefix: str | Path, top_k: int = 50,
                    subset_k: int = 3) -> tuple[Path, Path]:
    """Write CIRR's two submission files.

    Shapes:
        scores (Q, G), rows in ``split.queries`` order.

    Returns:
        The recall and recall_subset file paths.
    """
    _check(scores, split)
    scores = scores.detach().cpu()
    names = split.gallery_names
    recall: dict[str, object] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, object] = {"version": "rc2", "metric": "recall_subset"}
    for row, q in zip(scores, split.queries, strict=True):
        recall[str(q.id)] = [names[j] for j in top_k_positions(row, top_k, exclude=q.reference)]
        subset[str(q.id)] = [names[j] for j in top_k_positions(row, subset_k, exclude=q.reference, among=q.members)]
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    out = (prefix.with_name(prefix.name + "_recall.json"), prefix.with_name(prefix.name + "_recall_subset.json"))
    out[0].write_text(json.dumps(recall))
    out[1].write_text(json.dumps(subset))
    return out


def circo_submission(scores: Tensor, split: CIRSplit, path: str | Path, top_k: int = 50) -> Path:
    """Write CIRCO's submission file (the reference stays in the ranking, as in the released code).

    Shapes:
        scores (Q, G), rows in ``split.queries`` order.
    """
    _check(scores, split)
    scores = scores.detach().cpu()
    out = {str(q.id): [split.gallery_names[j] for j in top_k_positions(row, top_k)]
           for row, q in zip(scores, split.queries, strict=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return path
