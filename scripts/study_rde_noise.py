"""RDE noise study on the embedded SynthPedes world.

Trains, through the real CLI, four variants of :class:`mmembed.methods.rde.module.RDEModule`
for every (caption-noise rate, seed) pair and summarises validation R@1 / mAP (SynthPedes'
held-out *val* identities, not a test split), CCD label precision / recall and CCD overhead:

* ``bge_trl``: BGE only, hardest-negative TRL, no CCD (the collapse-prone baseline).
* ``tal_no_ccd``: BGE+TSE with TAL, every pair trusted.
* ``rde``: the full method (TAL + BGE+TSE + CCD).
* ``oracle``: BGE+TSE with TAL trained on the ground-truth clean pairs only.

The noise permutation stays fixed (``caption_noise.seed`` = 1, as in the reference); only
``seed_everything`` varies. The GMM preset follows the reference's rule: ``strict`` when the
noise rate is above 0.4, else ``light``. The cosine schedule's ``total`` is set to ``--epochs``.

Example:
    .venv/bin/python scripts/study_rde_noise.py --epochs 3 --extra --data.init_args.num_ids=200
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

CONFIG = "experiments/rde/synth_pedes.yaml"
RUNS = {
    "bge_trl": ["--model.init_args.use_tse=false", "--model.init_args.objective=trl",
                "--model.init_args.use_ccd=false"],
    "tal_no_ccd": ["--model.init_args.use_ccd=false"],
    "rde": [],
    "oracle": ["--model.init_args.oracle_labels=true", "--model.init_args.use_ccd=false"],
}


def parse_args() -> argparse.Namespace:
    """Parses the command line.

    Returns:
        The parsed options.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="trainer.max_epochs (and the schedule length)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.5, 0.8], help="caption noise rates")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="seed_everything values")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="variants to train")
    p.add_argument("--out", default="runs/study_rde_noise", help="output folder")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="arguments passed through to `mmembed fit` (must come last)")
    p.add_argument("--force", action="store_true", help="retrain runs whose results already exist")
    return p.parse_args()


def run_dir(out: str, rate: float, run: str, seed: int) -> str:
    """Returns the logger save_dir of one run."""
    return os.path.join(out, f"{rate:g}", run, f"seed{seed}")


def train(args: argparse.Namespace, rate: float, run: str, seed: int) -> float:
    """Trains one run with ``mmembed fit``.

    Args:
        args: The study options.
        rate: Caption noise rate.
        run: Variant name (a key of ``RUNS``).
        seed: ``seed_everything`` value.

    Returns:
        Wall-clock seconds of the training process.

    Raises:
        RuntimeError: If the CLI exits with an error.
    """
    save_dir = run_dir(args.out, rate, run, seed)
    cmd = [sys.executable, "-m", "mmembed", "fit", "-c", CONFIG,
           f"--seed_everything={seed}",
           f"--data.init_args.caption_noise.init_args.rate={rate}",
           f"--model.init_args.gmm={'strict' if rate > 0.4 else 'light'}",
           f"--model.init_args.lr_scheduler.init_args.total={args.epochs}",
           f"--trainer.max_epochs={args.epochs}", "--trainer.check_val_every_n_epoch=1",
           "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={save_dir}",
           *RUNS[run], *args.extra]
    start = time.perf_counter()
    with open(os.path.join(save_dir, "fit.log"), "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"run failed ({proc.returncode}); see {save_dir}/fit.log: {' '.join(cmd)}")
    return time.perf_counter() - start


def read_run(save_dir: str) -> dict[str, float]:
    """Reads the latest version's TensorBoard events of one run.

    Args:
        save_dir: The logger save_dir of the run.

    Returns:
        best / last ``val/t2i_r1`` and ``val/t2i_map``, last CCD precision / recall (NaN when
        absent) and mean ``ccd_seconds`` / ``epoch_seconds``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted(glob.glob(os.path.join(save_dir, "rde_synth_pedes", "version_*")),
                      key=lambda v: int(v.rsplit("_", 1)[1]))
    acc = EventAccumulator(versions[-1], size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])

    def values(tag: str) -> list[float]:
        return [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)] if tag in tags else []

    r1, mp = values("val/t2i_r1"), values("val/t2i_map")
    nan = float("nan")
    last = lambda v: v[-1] if v else nan  # noqa: E731
    mean = lambda v: float(np.mean(v)) if v else nan  # noqa: E731
    return {"best_r1": max(r1), "last_r1": r1[-1], "best_map": max(mp), "last_map": mp[-1],
            "ccd_precision": last(values("train/ccd_precision")),
            "ccd_recall": last(values("train/ccd_recall")),
            "ccd_seconds": mean(values("train/ccd_seconds")),
            "epoch_seconds": mean(values("train/epoch_seconds"))}


def fmt(xs: list[float], scale: float = 1.0) -> str:
    """Formats mean ± std (population std over seeds), or ``-`` when all values are NaN."""
    a = np.asarray(xs, dtype=float) * scale
    a = a[~np.isnan(a)]
    return "-" if a.size == 0 else f"{a.mean():.1f} ± {a.std():.1f}" if scale != 1 else f"{a.mean():.2f} ± {a.std():.2f}"


def summarise(args: argparse.Namespace, results: dict) -> str:
    """Writes ``results.md`` and ``study.png``.

    Args:
        args: The study options.
        results: ``{(rate, run): [per-seed metric dicts]}``.

    Returns:
        The markdown table.
    """
    lines = ["| noise | run | best R@1 | last R@1 | best mAP | last mAP | CCD precision | CCD recall "
             "| CCD / epoch time |", "|---|---|---|---|---|---|---|---|---|"]
    for (rate, run), rs in results.items():
        col = lambda k: [r[k] for r in rs]  # noqa: E731
        ratio = [r["ccd_seconds"] / r["epoch_seconds"] for r in rs]
        lines.append(f"| {rate:g} | {run} | {fmt(col('best_r1'))} | {fmt(col('last_r1'))} | "
                     f"{fmt(col('best_map'))} | {fmt(col('last_map'))} | {fmt(col('ccd_precision'))} | "
                     f"{fmt(col('ccd_recall'))} | {fmt(ratio, 100).replace(' ±', '% ±')} |")
    table = "\n".join(lines)
    header = (f"# RDE noise study\n\nepochs={args.epochs}, seeds={args.seeds}, extra={args.extra}. "
              "Metrics on SynthPedes' held-out val identities (R@1 / mAP in %, as logged), "
              "mean ± std over seeds; CCD precision / recall of the last epoch's labels against "
              "the ground-truth clean flags; CCD / epoch time = mean ccd_seconds / epoch_seconds.\n\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(header + table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({f"{rate:g}/{run}": rs for (rate, run), rs in results.items()}, f, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({rate for rate, _ in results})
    runs = [r for r in RUNS if any(run == r for _, run in results)]
    width = 0.8 / (2 * len(runs))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, run in enumerate(runs):
        colour = f"C{i}"
        for j, (key, hatch) in enumerate((("best_r1", None), ("last_r1", "//"))):
            xs, ms, ss = [], [], []
            for k, rate in enumerate(rates):
                vals = [r[key] for r in results.get((rate, run), [])]
                if vals:
                    xs.append(k + (2 * i + j + 0.5) * width - 0.4)
                    ms.append(np.mean(vals))
                    ss.append(np.std(vals))
            ax.bar(xs, ms, width, yerr=ss, capsize=2, color=colour if hatch is None else "white",
                   edgecolor=colour, hatch=hatch, label=f"{run} ({'best' if hatch is None else 'last'})")
    lows = [np.mean([r["last_r1"] for r in rs]) - np.std([r["last_r1"] for r in rs]) for rs in results.values()]
    highs = [np.mean([r["best_r1"] for r in rs]) + np.std([r["best_r1"] for r in rs]) for rs in results.values()]
    ax.set_ylim(max(0.0, np.floor(min(lows)) - 2), np.ceil(max(highs)) + 3)  # zoom: gaps are small
    ax.set_xticks(range(len(rates)), [f"noise {r:g}" for r in rates])
    ax.set_ylabel("val t2i R@1 (%), y axis zoomed")
    ax.set_title(f"RDE on SynthPedes: best (solid) / last (hatched) R@1, mean ± std over seeds {args.seeds}")
    ax.legend(ncol=4, fontsize=7, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "study.png"), dpi=120)
    plt.close(fig)
    return table


def main() -> None:
    """Runs the study (resumable) and prints the results table."""
    args = parse_args()
    results: dict = {}
    for rate in args.rates:
        for run in args.runs:
            for seed in args.seeds:
                save_dir = run_dir(args.out, rate, run, seed)
                done = os.path.join(save_dir, "done")
                if args.force or not os.path.exists(done):
                    os.makedirs(save_dir, exist_ok=True)
                    print(f"training noise={rate:g} run={run} seed={seed} ...", flush=True)
                    seconds = train(args, rate, run, seed)
                    open(done, "w").write(f"{seconds:.1f}\n")
                    print(f"  done in {seconds:.0f} s", flush=True)
                results.setdefault((rate, run), []).append(read_run(save_dir))
    print(summarise(args, results))


if __name__ == "__main__":
    main()
