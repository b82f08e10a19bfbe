"""LightCLIP through the real CLI: every loss term trains and is logged; the export is a plain open_clip model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmembed.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke" / "lightclip.yaml")


def test_fit_logs_every_term_and_exports_a_plain_open_clip_model(tmp_path):
    cli = main(["fit", "-c", SMOKE, f"--data.init_args.root={tmp_path / 'data'}",
                "--trainer.max_epochs=2", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
                f"--trainer.default_root_dir={tmp_path / 'root'}"])
    metrics = cli.trainer.callback_metrics
    for key in ("train/ins", "train/tok", "train/mlm", "train/mlm_acc", "train/alpha", "train/logit_scale",
                "val/t2i_r1"):
        assert key in metrics, key
    assert 0.0 < float(metrics["train/alpha"]) <= 0.2  # ramping up from 0 during training
    run = Path(cli.trainer.log_dir)
    import open_clip

    config = json.loads((run / "open_clip_config.json").read_text())
    model = open_clip.CLIP(**config)
    state = torch.load(run / "open_clip_model.pt", weights_only=True)
    assert not any(k.startswith(("mlm", "fusions", "loss")) for k in state)  # train-only parts dropped
    model.load_state_dict(state, strict=True)
    model.eval()
    images = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), cli.model.encoder.eval().encode_image(images).embedding)
