"""Readable metric tables for the terminal (rich)."""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = (("r1", "R@1"), ("r5", "R@5"), ("r10", "R@10"), ("map", "mAP"), ("minp", "mINP"))


def print_retrieval_table(metrics: Mapping[str, float], title: str) -> None:
    """Print one row of retrieval metrics (percent) the way papers report them.

    Args:
        metrics: Keys such as ``r1``, ``r5``, ``r10``, ``map``, ``minp`` (others are appended).
        title: Table title, e.g. ``"text-to-image retrieval (test)"``.
    """
    from rich.console import Console
    from rich.table import Table

    known = [(k, label) for k, label in COLUMNS if k in metrics]
    extra = [(k, k) for k in metrics if k not in dict(COLUMNS)]
    table = Table(title=title, min_width=len(title) + 4)
    for _, label in known + extra:
        table.add_column(label, justify="right")
    table.add_row(*(f"{metrics[k]:.2f}" for k, _ in known + extra))
    Console().print(table)
