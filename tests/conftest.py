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


def _tiny_encoder():
    import torch

    from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder

    torch.manual_seed(0)
    return OpenCLIPDualEncoder(model_config={
        "embed_dim": 16,
        "vision_cfg": {"image_size": [32, 16], "patch_size": 8, "width": 16, "layers": 1, "head_width": 8},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    })


@pytest.fixture
def tiny_encoder() -> Callable[[], object]:
    """Factory of a tiny open_clip dual encoder (16-d, one block per tower, 32x16 images, 12 tokens),
    built after ``torch.manual_seed(0)`` so every call gives the same weights."""
    return _tiny_encoder


@pytest.fixture(scope="session")
def synth_cir_world(tmp_path_factory) -> Path:
    """SynthCIR (seed 0, 360 renders in the CIRR layout), written once per test session; read-only."""
    from mmembed.data.synthetic.cir import write_synth_cir

    root = tmp_path_factory.mktemp("synth_cir") / "w"
    write_synth_cir(root, seed=0)
    return root
