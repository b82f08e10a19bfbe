"""Cost of RDE's CCD pass relative to a training epoch, on the SynthPedes config.

CCD encodes the whole training set once per epoch (forward only, inference mode) and fits two
GMMs. This runs ``mmembed fit -c experiments/rde/synth_pedes.yaml`` for a few epochs for each
``ccd_forward_batches`` value and prints, per epoch, ``train/ccd_seconds`` over
``train/epoch_seconds`` (the training part of the epoch, without CCD and validation).

Example:
    .venv/bin/python scripts/bench_rde_ccd.py --epochs 3 --forward-batches 1 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

from mmembed.eval.runs import latest_version, read_scalars


def per_epoch(save_dir: str, tag: str) -> list[float]:
    """Per-epoch values of one scalar from the run's TensorBoard events."""
    return read_scalars(latest_version(save_dir), [tag])[tag]


def main() -> None:
    """Runs the fits and prints the CCD / epoch time ratios."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--forward-batches", type=int, nargs="+", default=[1, 4],
                   help="values of model.init_args.ccd_forward_batches to compare")
    p.add_argument("--config", default="experiments/rde/synth_pedes.yaml")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="passed to `mmembed fit` (last)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.forward_batches:
            save_dir = os.path.join(tmp, f"k{k}")
            cmd = [sys.executable, "-m", "mmembed", "fit", "-c", args.config,
                   f"--trainer.max_epochs={args.epochs}", "--trainer.enable_progress_bar=false",
                   f"--trainer.logger.init_args.save_dir={save_dir}",
                   "--model.init_args.export_encoder=false",
                   f"--model.init_args.ccd_forward_batches={k}", *args.extra]
            print(f"fit with ccd_forward_batches={k} ...", flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ccd, epoch = per_epoch(save_dir, "train/ccd_seconds"), per_epoch(save_dir, "train/epoch_seconds")
            rows.append((k, ccd, epoch))
    print(f"\n{'forward batches':>15} | {'CCD s / epoch':>14} | {'train s / epoch':>15} | CCD / train (per epoch)")
    for k, ccd, epoch in rows:
        ratios = np.asarray(ccd) / np.asarray(epoch)
        print(f"{k:>15} | {np.mean(ccd):>14.2f} | {np.mean(epoch):>15.2f} | "
              f"{ratios.mean():.1%} ({', '.join(f'{r:.1%}' for r in ratios)})")


if __name__ == "__main__":
    main()
