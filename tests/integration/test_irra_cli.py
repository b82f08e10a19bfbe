"""IRRA through the real CLI: fit on noisy tiny SynthPedes, re-test from the saved config, bad num_classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmembed.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke" / "irra.yaml")


def overrides(tmp: Path) -> list[str]:
    return [
        f"--data.init_args.root={tmp.parent / 'rde_data'}",  # the same tiny world as the RDE CLI tests
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
        f"--trainer.default_root_dir={tmp / 'root'}",
    ]


def test_fit_then_test_from_saved_config(tmp_path):
    cli = main(["fit", "-c", SMOKE, *overrides(tmp_path)])
    n_train = len(cli.trainer.train_dataloader.dataset)
    assert cli.trainer.global_step == 2 * (n_train // 8)
    metrics = cli.trainer.callback_metrics
    for key in ("train/sdm", "train/id", "train/mlm", "train/mlm_acc", "val/t2i_r1", "val/t2i_map"):
        assert key in metrics, key
    run = Path(cli.trainer.log_dir)
    assert (run / "open_clip_model.pt").is_file()  # the encoder alone is exported (no MLM / classifier)
    test = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    assert 0.0 <= float(test.trainer.callback_metrics["test/t2i_r1"]) <= 100.0


def test_too_few_classes_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="set num_classes to 9"):
        main(["fit", "-c", SMOKE, *overrides(tmp_path), "--model.init_args.num_classes=3"])
