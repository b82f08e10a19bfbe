"""End-to-end runs through the real CLI on the smoke config (tiny model, tiny SynthPedes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmembed.cli import main
from mmembed.data.synth import SynthPedesDataModule
from mmembed.eval.evaluator import evaluate_retrieval
from mmembed.lit.embedding_module import EmbeddingModule
from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke" / "clip.yaml")
METRICS = ("r1", "r5", "r10", "map", "minp")


def overrides(tmp: Path) -> list[str]:
    return [
        f"--data.init_args.root={tmp / 'data'}",
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
        f"--trainer.default_root_dir={tmp / 'root'}",
    ]


def test_metrics(cli, stage: str) -> dict[str, float]:
    return {m: float(cli.trainer.callback_metrics[f"{stage}/t2i_{m}"]) for m in METRICS}


test_metrics.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    cli = main(["fit", "-c", SMOKE, *overrides(tmp)])
    run = Path(cli.trainer.log_dir)
    return tmp, run, cli


def test_fit_writes_config_checkpoints_and_export(fitted):
    _, run, cli = fitted
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert "val/t2i_r1" in cli.trainer.callback_metrics
    # the exported plain open_clip state dict loads as a "pretrained CLIP"
    import json

    cfg = json.loads((run / "open_clip_config.json").read_text())
    enc = OpenCLIPDualEncoder(model_config=cfg, pretrained=str(run / "open_clip_model.pt"))
    ref = cli.model.encoder.model.state_dict()
    for k, v in enc.model.state_dict().items():
        torch.testing.assert_close(v, ref[k])


def test_saved_config_reproduces_test_metrics(fitted):
    tmp, run, _ = fitted
    ckpt = str(run / "checkpoints" / "best.ckpt")
    first = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", ckpt])
    second = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", ckpt])
    m1, m2 = test_metrics(first, "test"), test_metrics(second, "test")
    assert m1 == m2
    # independent path: rebuild from the checkpoint alone, evaluate with the Lightning-free evaluator
    model = EmbeddingModule.load_from_checkpoint(ckpt, weights_only=True).eval()
    dm = SynthPedesDataModule(root=str(tmp / "data"), num_ids=12, images_per_id=2, image_height=64, image_width=32,
                              workers=1, eval_batch_size=5, processor=model.processor)
    queries, gallery = dm.test_dataloader()
    ref = evaluate_retrieval(model, queries, gallery)
    for m in METRICS:
        assert m1[m] == pytest.approx(ref[m], abs=1e-4)
    png = Path(first.trainer.log_dir) / "ranked_test.png"
    assert png.is_file() and png.stat().st_size > 1000


def test_validate_and_predict(fitted):
    _, run, _ = fitted
    ckpt = str(run / "checkpoints" / "best.ckpt")
    val = main(["validate", "-c", str(run / "config.yaml"), "--ckpt_path", ckpt])
    assert "val/t2i_map" in val.trainer.callback_metrics
    pred = main(["predict", "-c", str(run / "config.yaml"), "--ckpt_path", ckpt])
    out = Path(pred.trainer.log_dir) / "predictions"
    queries, gallery = torch.load(out / "queries.pt"), torch.load(out / "gallery.pt")
    assert queries["embedding"].shape[1] == gallery["embedding"].shape[1] == 32
    assert torch.equal(gallery["index"], torch.arange(len(gallery["index"])))


def test_fast_dev_run(tmp_path):
    cli = main(["fit", "-c", SMOKE, *overrides(tmp_path), "--trainer.fast_dev_run=true"])
    assert cli.trainer.state.finished


@pytest.mark.parametrize(
    "bad",
    [
        "--model.init_args.encoderr=1",
        "--trainer.max_epoch=3",
        "--data.init_args.batch_sise=4",
    ],
)
def test_mistyped_keys_fail_before_any_work(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "-c", SMOKE, *overrides(tmp_path), bad])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    key = bad.split("=")[0].rsplit(".", 1)[-1]
    assert key in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_mistyped_key_in_yaml(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  init_args:\n    plot_querries: 3\n")
    with pytest.raises(SystemExit):
        main(["fit", "-c", SMOKE, "-c", str(cfg), *overrides(tmp_path)])
    assert "plot_querries" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_console_script_and_module_entry(tmp_path):
    exe = Path(sys.executable).with_name("mmembed")
    for cmd in ([str(exe), "--help"], [sys.executable, "-m", "mmembed", "--help"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "fit" in res.stdout and "predict" in res.stdout


def test_ddp_two_cpu_processes(tmp_path):
    """strategy=ddp, devices=2, accelerator=cpu through the CLI (gloo); Lightning relaunches `python -m mmembed`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mmembed", "fit", "-c", SMOKE, *overrides(tmp_path),
           "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_epochs=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = list((tmp_path / "runs" / "smoke").glob("version_*"))
    assert len(runs) == 1, runs
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    # 8 train ids x 2 images x 2 captions = 32 pairs; 2 ranks x batch 8 -> 2 steps per epoch
    assert ckpt["global_step"] == 4
    assert (runs[0] / "open_clip_model.pt").is_file()
