"""Shared test fixtures."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest


def _folder_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def folder_digest() -> Callable[[Path], str]:
    """Hash of every path and file byte under a folder (to prove a dataset folder was not modified)."""
    return _folder_digest
