"""CLIP training on webdataset shards through the real CLI (data class switched on the command line)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from mmembed.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke" / "clip.yaml")
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (220, 220, 40)}


def write_shards(folder: Path, n_shards: int = 2, per_shard: int = 12) -> None:
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    for s in range(n_shards):
        with tarfile.open(folder / f"train-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                colour = names[(s * per_shard + i) % len(names)]
                pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 10, (32, 16, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("txt", f"a {colour} picture".encode())):
                    info = tarfile.TarInfo(f"{s:03d}{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_fit_and_test_on_shards(tmp_path):
    write_shards(tmp_path)
    cli = main([
        "fit", "-c", SMOKE,
        "--data.class_path=mmembed.data.image_text.ImageTextDataModule",
        f"--data.init_args.train={tmp_path}/train-*.tar",
        f"--data.init_args.val={tmp_path}/train-001.tar",
        f"--data.init_args.test={tmp_path}/train-001.tar",
        "--data.init_args.batch_size=8", "--data.init_args.eval_batch_size=16",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.default_root_dir={tmp_path / 'root'}",
    ])
    assert cli.trainer.global_step == 24 // 8  # one epoch over both shards
    assert "val/t2i_r1" in cli.trainer.callback_metrics
    run = Path(cli.trainer.log_dir)
    test = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert 0.0 <= float(test.trainer.callback_metrics["test/t2i_r1"]) <= 100.0
