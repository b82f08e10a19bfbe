"""SigLIP through the real CLI: fit the tiny config, re-test from the saved config, reload the checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from mmembed.cli import main
from mmembed.losses.sigmoid import SigLipLoss
from mmembed.methods.siglip.module import SigLIPModule

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke" / "siglip.yaml")


def test_fit_test_and_reload(tmp_path):
    common = [f"--data.init_args.root={tmp_path / 'data'}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    cli = main(["fit", "-c", SMOKE, *common, "--trainer.max_epochs=2"])
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "train/logit_scale", "train/logit_bias", "val/t2i_r1", "val/i2t_r1"):
        assert key in metrics, key
    assert isinstance(cli.model, SigLIPModule) and isinstance(cli.model.loss, SigLipLoss)
    # the bias and the temperature learn (they start at -10 and 10)
    assert float(cli.model.loss.logit_bias) != -10.0
    assert abs(float(cli.model.loss.logit_scale()) - 10.0) > 1e-6
    run = Path(cli.trainer.log_dir)
    assert (run / "open_clip_model.pt").is_file()

    ckpt = run / "checkpoints" / "last.ckpt"
    test = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(ckpt)])
    assert 0.0 <= float(test.trainer.callback_metrics["test/t2i_r1"]) <= 100.0
    assert (Path(test.trainer.log_dir) / "ranked_test.png").is_file()

    reloaded = SigLIPModule.load_from_checkpoint(ckpt)
    torch.testing.assert_close(reloaded.loss.logit_bias, cli.model.loss.logit_bias)
    for (name, a), b in zip(cli.model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
