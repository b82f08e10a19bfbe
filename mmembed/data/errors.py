"""Readable dataset errors: name the file, show the first offenders, count the rest."""

from __future__ import annotations

from pathlib import Path


class DatasetFormatError(ValueError):
    """A dataset file is missing, malformed or inconsistent with its folder."""


def describe_offenders(path: str | Path, problem: str, offenders: list[str], show: int = 5) -> str:
    """Format ``"<path>: N <problem>: a; b; c (and M more)"``.

    Args:
        path: The file the problem was found in.
        problem: What is wrong, in plural (e.g. ``"entries with empty captions"``).
        offenders: One description per offending entry.
        show: How many to list.

    Returns:
        The message.
    """
    head = "; ".join(offenders[:show])
    rest = f" (and {len(offenders) - show} more)" if len(offenders) > show else ""
    return f"{path}: {len(offenders)} {problem}: {head}{rest}"
