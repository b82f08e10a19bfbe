"""Configs meant for OpenAI CLIP weights build QuickGELU towers (as the released models are), and the
encoder warns when a checkpoint's own config disagrees with the model built."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
ENCODER = "mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder"


def _openai_archs() -> set[str]:
    import open_clip

    return {name for name, tag in open_clip.list_pretrained() if tag == "openai"}


def _encoders(node: Any) -> list[dict]:
    if isinstance(node, dict):
        found = [node.get("init_args") or {}] if node.get("class_path") == ENCODER else []
        return found + [e for value in node.values() for e in _encoders(value)]
    if isinstance(node, list):
        return [e for value in node for e in _encoders(value)]
    return []


def gelu_mismatches(config: dict, archs: set[str]) -> list[str]:
    """Encoders that name an architecture OpenAI released weights for, with GELU instead of QuickGELU."""
    import open_clip

    out = []
    for args in _encoders(config):
        name = args.get("model_name")
        if name not in archs:
            continue
        quick = (args.get("model_config") or open_clip.get_model_config(name) or {}).get("quick_gelu", False)
        if not quick:
            out.append(f"{name} (use {name}-quickgelu)")
    return out


def test_every_config_for_openai_weights_uses_quickgelu():
    archs = _openai_archs()
    offences = {}
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        bad = gelu_mismatches(yaml.safe_load(path.read_text()), archs)
        if bad:
            offences[str(path.relative_to(EXPERIMENTS))] = bad
    assert not offences, offences
    # the check finds what it looks for
    planted = {"model": {"init_args": {"encoder": {"class_path": ENCODER, "init_args": {"model_name": "ViT-L-14"}}}}}
    assert gelu_mismatches(planted, archs) == ["ViT-L-14 (use ViT-L-14-quickgelu)"]
    planted["model"]["init_args"]["encoder"]["init_args"]["model_name"] = "ViT-L-14-quickgelu"
    assert gelu_mismatches(planted, archs) == []


def test_loading_weights_whose_config_disagrees_warns(tiny_encoder, tmp_path):
    from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder

    source = tiny_encoder()  # GELU
    weights, _ = source.export(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OpenCLIPDualEncoder(model_config=source.config, pretrained=str(weights))  # the same config: silent
    with pytest.warns(UserWarning, match=r"quick_gelu: False in the checkpoint's config, True built"):
        OpenCLIPDualEncoder(model_config={**source.config, "quick_gelu": True}, pretrained=str(weights))
    other = {**source.config, "text_cfg": {**source.config["text_cfg"], "heads": 4}}
    with pytest.warns(UserWarning, match=r"text_cfg.heads: 2 in the checkpoint's config, 4 built"):
        OpenCLIPDualEncoder(model_config=other, pretrained=str(weights))
