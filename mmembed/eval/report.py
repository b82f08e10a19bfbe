"""Readable metric tables for the terminal (rich)."""

from __future__ import annotations

import re
from collections.abc import Mapping

COLUMNS = (("r1", "R@1"), ("r5", "R@5"), ("r10", "R@10"), ("map", "mAP"), ("minp", "mINP"))
_PATTERNS = ((re.compile(r"^r(\d+)$"), "R@{}"), (re.compile(r"^subset_r(\d+)$"), "Rs@{}"),
             (re.compile(r"^map(\d+)$"), "mAP@{}"))


def _label(key: str) -> str:
    for pattern, label in _PATTERNS:
        match = pattern.match(key)
        if match:
            return label.format(match.group(1))
    return key


def print_retrieval_table(rows: Mapping[str, Mapping[str, float]], title: str) -> None:
    """Print retrieval metrics (percent) the way papers report them, one row per embedding view.

    Args:
        rows: View name -> metrics with keys such as ``r1``, ``r5``, ``r10``, ``map``,
            ``minp`` (others are appended). A single view named ``"main"`` prints without
            a name column.
        title: Table title, e.g. ``"text-to-image retrieval (test)"``.
    """
    from rich.console import Console
    from rich.table import Table

    first = next(iter(rows.values()))
    known = [(k, label) for k, label in COLUMNS if k in first]
    extra = [(k, _label(k)) for k in first if k not in dict(COLUMNS)]
    named = list(rows) != ["main"]
    table = Table(title=title, min_width=len(title) + 4)
    if named:
        table.add_column("view")
    for _, label in known + extra:
        table.add_column(label, justify="right")
    for view, metrics in rows.items():
        cells = [f"{metrics[k]:.2f}" if k in metrics else "-" for k, _ in known + extra]
        table.add_row(*([view] if named else []), *cells)
    Console().print(table)
