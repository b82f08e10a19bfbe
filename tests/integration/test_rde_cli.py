"""RDE through the real CLI: fit with CCD on noisy SynthPedes, re-test from the saved config, resume."""

from __future__ import annotations

from pathlib import Path

import torch

from mmembed.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke" / "rde.yaml")


def overrides(tmp: Path) -> list[str]:
    return [
        f"--data.init_args.root={tmp.parent / 'rde_data'}",
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
        f"--trainer.default_root_dir={tmp / 'root'}",
    ]


def test_fit_with_ccd_then_test_from_saved_config(tmp_path):
    # workers persist across epochs: CCD's extra pass must not consume the trainer's own iterator
    cli = main(["fit", "-c", SMOKE, *overrides(tmp_path), "--data.init_args.num_workers=1"])
    n_train = len(cli.trainer.train_dataloader.dataset)
    assert cli.trainer.global_step == 2 * (n_train // 8)  # every epoch trained all its batches
    metrics = cli.trainer.callback_metrics
    for key in ("train/ccd_precision", "train/ccd_recall", "val/t2i_r1", "val/t2i_bge_r1", "val/t2i_tse_r1",
                "train/ccd_bge_precision", "train/ccd_tse_precision", "train/ccd_agreement"):
        assert key in metrics, key
    for key in ("train/ccd_precision", "train/ccd_agreement"):
        assert 0.0 <= float(metrics[key]) <= 1.0
    for key in ("train/cos_clean", "train/cos_noisy", "train/cos_neg", "train/cos_pair"):  # 50% noise: both kinds
        assert -1.0 <= float(metrics[key]) <= 1.0, key
    assert float(metrics["train/cos_neg_std"]) > 0
    labels = cli.model.ccd_labels
    assert labels.numel() == len(cli.trainer.train_dataloader.dataset)
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    run = Path(cli.trainer.log_dir)
    test = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    again = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    for key in ("test/t2i_r1", "test/t2i_map", "test/t2i_bge_r1", "test/t2i_tse_minp"):
        assert float(test.trainer.callback_metrics[key]) == float(again.trainer.callback_metrics[key])


def test_resume_mid_training_keeps_schedule_and_ccd(tmp_path):
    straight = main(["fit", "-c", SMOKE, *overrides(tmp_path / "a"), "--trainer.max_epochs=2"])
    first = main(["fit", "-c", SMOKE, *overrides(tmp_path / "b"), "--trainer.max_epochs=1"])
    ckpt_path = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    assert ckpt["rde_ccd_labels"].numel() == len(first.trainer.train_dataloader.dataset)  # CCD labels saved
    resumed = main(["fit", "-c", SMOKE, *overrides(tmp_path / "b"), "--trainer.max_epochs=2", "--ckpt_path", str(ckpt_path)])
    assert resumed.trainer.global_step == straight.trainer.global_step
    lr_straight = [g["lr"] for g in straight.trainer.optimizers[0].param_groups]
    lr_resumed = [g["lr"] for g in resumed.trainer.optimizers[0].param_groups]
    assert lr_resumed == lr_straight  # warm-up + cosine continues from the saved epoch
    assert "train/ccd_precision" in resumed.trainer.callback_metrics  # CCD ran again in the resumed epoch


def test_bge_only_model_divides_by_bge_alone(tmp_path):
    cli = main(["fit", "-c", SMOKE, *overrides(tmp_path), "--model.init_args.use_tse=false", "--trainer.max_epochs=1"])
    metrics = cli.trainer.callback_metrics
    assert "train/ccd_precision" in metrics and "train/ccd_agreement" not in metrics
    assert "val/t2i_tse_r1" not in metrics
    assert set(cli.model.ccd_labels.unique().tolist()) <= {0.0, 1.0}
