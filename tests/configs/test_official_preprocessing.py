"""Configs of the official regimes prepare images as each method's official code does: person ReID on real
data resizes bilinearly (images and the position grid), composed retrieval keeps the aspect ratio and crops."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _encoder_args(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    return config["model"]["init_args"]["encoder"]["init_args"]


@pytest.mark.parametrize("name", ["rde/cuhk_pedes.yaml", "rde/icfg_pedes.yaml", "rde/rstpreid.yaml", "irra/cuhk_pedes.yaml"])
def test_person_reid_configs_resize_bilinearly(name):
    args = _encoder_args(EXPERIMENTS / name)
    assert args["image_interpolation"] == "bilinear" and args["pos_embed_interpolation"] == "bilinear"
    assert args.get("image_resize", "squash") == "squash"  # a direct resize to 384x128


@pytest.mark.parametrize("name", ["lincir/vitl14.yaml", "rtd/rtd_vitl14.yaml", "lincir/synth_cir.yaml", "rtd/rtd_synth.yaml"])
def test_composed_retrieval_configs_keep_the_aspect_ratio(name):
    assert _encoder_args(EXPERIMENTS / name)["image_resize"] == "shorter_side_crop"
