"""RDE noise study on the embedded SynthPedes world.

Trains, through the real CLI, variants of :class:`mmembed.methods.rde.module.RDEModule` (and
the IRRA baseline) for every (caption-noise rate, seed) pair and summarises validation R@1 / mAP
(SynthPedes' held-out *val* identities, not a test split), CCD label quality, the cosine
statistics of clean / noisy training pairs and CCD overhead:

* ``bge_trl``: BGE only, hardest-negative TRL, no CCD (the collapse-prone baseline).
* ``tal_no_ccd``: BGE+TSE with TAL, every pair trusted.
* ``rde``: the full method (TAL + BGE+TSE + CCD).
* ``rde_bge``: TAL + CCD on BGE alone (the paper's "BGE only" ablation; CCD divides by BGE's loss).
* ``oracle``: BGE+TSE with TAL trained on the ground-truth clean pairs only.
* ``irra``: the IRRA baseline (SDM + ID + cross-modal MLM, ``experiments/irra/synth_pedes.yaml``).

The noise permutation stays fixed (``caption_noise.seed`` = 1, as in the reference); only
``seed_everything`` varies. The GMM preset follows the reference's rule: ``strict`` when the
noise rate is above 0.4, else ``light``. The cosine schedule's total follows ``--epochs`` (the trainer's budget).

Examples:
    .venv/bin/python scripts/study_rde_noise.py --epochs 10 --runs bge_trl tal_no_ccd rde oracle
    .venv/bin/python scripts/study_rde_noise.py --gpu --jobs 8 --seeds 1 2 3 --extra --data.init_args.workers=16
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from mmembed.eval.runs import Job, latest_version, read_scalars, run_jobs

CONFIG = "experiments/rde/synth_pedes.yaml"
IRRA_CONFIG = "experiments/irra/synth_pedes.yaml"  # same world, noise and starting encoder
RUNS = {
    "bge_trl": ["--model.init_args.use_tse=false", "--model.init_args.objective=trl",
                "--model.init_args.use_ccd=false"],
    "tal_no_ccd": ["--model.init_args.use_ccd=false"],
    "rde": [],
    "rde_bge": ["--model.init_args.use_tse=false"],
    "oracle": ["--model.init_args.oracle_labels=true", "--model.init_args.use_ccd=false"],
    "irra": [],  # IRRA_CONFIG: SDM + ID + MLM, no noise handling
}


def parse_args() -> argparse.Namespace:
    """Parses the command line.

    Returns:
        The parsed options.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10, help="trainer.max_epochs (and the schedule length)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.5, 0.8], help="caption noise rates")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="seed_everything values")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="variants to train")
    p.add_argument("--out", default="runs/study_rde_noise", help="output folder")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="arguments passed through to `mmembed fit` (must come last)")
    p.add_argument("--force", action="store_true", help="retrain runs whose results already exist")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once (each gets cores / jobs threads)")
    p.add_argument("--summarise-only", action="store_true",
                   help="train nothing; summarise the runs that have finished (e.g. after a time limit)")
    p.add_argument("--gpu", action="store_true",
                   help="add experiments/base/trainer_gpu.yaml (one GPU, bf16-mixed; jobs share the GPU)")
    return p.parse_args()


def run_dir(out: str, rate: float, run: str, seed: int) -> str:
    """Returns the logger save_dir of one run."""
    return os.path.join(out, f"{rate:g}", run, f"seed{seed}")


def config_args(args: argparse.Namespace, run: str = "rde") -> list[str]:
    """The config stack of a run: its SynthPedes config (plus the GPU trainer)."""
    config = IRRA_CONFIG if run == "irra" else CONFIG
    return ["-c", config, *(["-c", "experiments/base/trainer_gpu.yaml"] if args.gpu else [])]


def prepare_world(args: argparse.Namespace) -> None:
    """Generates the SynthPedes world once, before parallel runs could race to write it."""
    from mmembed.cli import main as cli_main

    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI parses only the list below
    try:
        cli = cli_main([*config_args(args), *args.extra], run=False)
    finally:
        sys.argv = argv
    cli.datamodule.prepare_data()


def command(args: argparse.Namespace, rate: float, run: str, seed: int) -> list[str]:
    """The ``mmembed fit`` command line of one run.

    Args:
        args: The study options.
        rate: Caption noise rate.
        run: Variant name (a key of ``RUNS``).
        seed: ``seed_everything`` value.

    Returns:
        The argument list.
    """
    save_dir = run_dir(args.out, rate, run, seed)
    gmm = [] if run == "irra" else [f"--model.init_args.gmm={'strict' if rate > 0.4 else 'light'}"]
    return [sys.executable, "-m", "mmembed", "fit", *config_args(args, run),
           f"--seed_everything={seed}",
           f"--data.init_args.caption_noise.init_args.rate={rate}", *gmm,
           f"--trainer.max_epochs={args.epochs}", "--trainer.check_val_every_n_epoch=1",
           "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={save_dir}",
           *RUNS[run], *args.extra]


def train_all(args: argparse.Namespace, todo: list[tuple[float, str, int]]) -> None:
    """Trains the given runs, ``args.jobs`` at a time, writing each run's ``done`` file.

    Args:
        args: The study options.
        todo: (rate, run, seed) triples to train.

    Raises:
        RuntimeError: If a training exits with an error (the others are still awaited).
    """
    def finished(log: str) -> bool:  # a stopped run can exit 0 (SIGTERM)
        return f"`max_epochs={args.epochs}` reached" in log

    run_jobs([Job(f"noise={rate:g} run={run} seed={seed}", run_dir(args.out, rate, run, seed),
                  [command(args, rate, run, seed)], finished) for rate, run, seed in todo], args.jobs)


HISTORY = ("val/t2i_r1", "val/t2i_map", "val/t2i_bge_r1", "val/t2i_tse_r1", "train/ccd_precision",
           "train/ccd_recall", "train/cos_clean", "train/cos_noisy", "train/cos_neg", "train/cos_neg_std",
           "train/ccd_bge_precision", "train/ccd_tse_precision", "train/ccd_agreement")


def read_run(save_dir: str) -> dict:
    """Reads the latest version's TensorBoard events of one run.

    Args:
        save_dir: The logger save_dir of the run.

    Returns:
        best / last ``val/t2i_r1`` and ``val/t2i_map``; last-epoch CCD precision / recall and
        BGE cosine statistics (NaN when absent); mean ``ccd_seconds`` / ``epoch_seconds``; and
        ``history``, the per-epoch values of every tag in ``HISTORY`` that was logged.
    """
    version = latest_version(save_dir, "*_synth_pedes")
    scalars = read_scalars(version)

    def values(tag: str) -> list[float]:
        return scalars.get(tag, [])

    r1, mp = values("val/t2i_r1"), values("val/t2i_map")
    nan = float("nan")

    def last(v: list[float]) -> float:
        return v[-1] if v else nan

    def mean(v: list[float]) -> float:
        return float(np.mean(v)) if v else nan

    out = {"best_r1": max(r1), "last_r1": r1[-1], "best_map": max(mp), "last_map": mp[-1],
           "ccd_seconds": mean(values("train/ccd_seconds")),
           "epoch_seconds": mean(values("train/epoch_seconds"))}
    for tag in HISTORY[4:]:
        out[tag.split("/", 1)[1]] = last(values(tag))
    out["history"] = {tag: values(tag) for tag in HISTORY if tag in scalars}
    out["encoder_drift"] = encoder_drift(version)
    return out


def encoder_drift(version_dir: str) -> float:
    """How far training moved the encoder: ``||theta_end - theta_start|| / ||theta_start||`` over
    the floating-point weights, from the exported ``open_clip_model.pt`` and the config's
    ``pretrained`` file (NaN when either is missing)."""
    import torch
    import yaml

    end_path = os.path.join(version_dir, "open_clip_model.pt")
    with open(os.path.join(version_dir, "config.yaml")) as f:
        start_path = yaml.safe_load(f)["model"]["init_args"]["encoder"]["init_args"].get("pretrained")
    if not start_path or not os.path.isfile(start_path) or not os.path.isfile(end_path):
        return float("nan")
    start = torch.load(start_path, map_location="cpu", weights_only=True)
    end = torch.load(end_path, map_location="cpu", weights_only=True)
    keys = [k for k, v in start.items() if v.is_floating_point() and k in end]
    diff = sum(float(((end[k].float() - start[k].float()) ** 2).sum()) for k in keys)
    norm = sum(float((start[k].float() ** 2).sum()) for k in keys)
    return (diff / norm) ** 0.5


def fmt(xs: list[float], scale: float = 1.0) -> str:
    """Formats mean ± std (population std over seeds), or ``-`` when all values are NaN."""
    a = np.asarray(xs, dtype=float) * scale
    a = a[~np.isnan(a)]
    return "-" if a.size == 0 else f"{a.mean():.1f} ± {a.std():.1f}" if scale != 1 else f"{a.mean():.2f} ± {a.std():.2f}"


def summarise(args: argparse.Namespace, results: dict) -> str:
    """Writes ``results.md``, ``results.json``, ``study.png`` and ``curves.png``.

    Args:
        args: The study options.
        results: ``{(rate, run): [per-seed metric dicts]}``.

    Returns:
        The markdown table.
    """
    lines = [("| noise | run | best R@1 | last R@1 | best mAP | last mAP | CCD precision | CCD recall "
              "| cos clean | cos noisy | cos neg (std) | encoder drift | CCD / epoch time |"), "|---" * 13 + "|"]
    for (rate, run), rs in results.items():
        def col(k: str, rs: list[dict] = rs) -> list[float]:
            return [r[k] for r in rs]

        ratio = [r["ccd_seconds"] / r["epoch_seconds"] for r in rs]
        lines.append(f"| {rate:g} | {run} | {fmt(col('best_r1'))} | {fmt(col('last_r1'))} | "
                     f"{fmt(col('best_map'))} | {fmt(col('last_map'))} | {fmt(col('ccd_precision'))} | "
                     f"{fmt(col('ccd_recall'))} | {fmt(col('cos_clean'))} | {fmt(col('cos_noisy'))} | "
                     f"{fmt(col('cos_neg'))} ({fmt(col('cos_neg_std'))}) | {fmt([100 * x for x in col('encoder_drift')])}% | "
                     f"{fmt(ratio, 100).replace(' ±', '% ±')} |")
    table = "\n".join(lines)
    header = (f"# RDE noise study\n\nepochs={args.epochs}, seeds={args.seeds}, gpu={args.gpu}, "
              f"extra={args.extra}. Metrics on SynthPedes' held-out val identities (R@1 / mAP in %, "
              "as logged), mean ± std over seeds. CCD precision / recall: the last epoch's labels "
              "against the ground-truth clean flags. cos clean / noisy: mean BGE cosine of the truly "
              "clean / noisy training pairs in the last epoch; cos neg: mean (std) over different-"
              "identity pairs in a batch. Encoder drift: relative L2 distance of the final encoder weights from the "
              "starting ones, in %. CCD / epoch time = mean ccd_seconds / epoch_seconds.\n\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(header + table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({f"{rate:g}/{run}": rs for (rate, run), rs in results.items()}, f, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    plot_bars(args, results)
    plot_curves(args, results)
    return table


def plot_bars(args: argparse.Namespace, results: dict) -> None:
    """``study.png``: best (solid) and last (hatched) val R@1 per run and noise rate."""
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
    ax.set_xticks(range(len(rates)), [f"noise {r:g}" for r in rates])
    ax.set_ylabel("val t2i R@1 (%)")
    ax.set_title(f"RDE on SynthPedes: best (solid) / last (hatched) R@1, mean ± std over seeds {args.seeds}")
    ax.legend(ncol=4, fontsize=7, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "study.png"), dpi=120)
    plt.close(fig)


def plot_curves(args: argparse.Namespace, results: dict) -> None:
    """``curves.png``: per epoch, one row per noise rate, of val R@1, the BGE cosines of clean
    (solid) and noisy (dashed) training pairs, and CCD's clean-label precision (seed means)."""
    import matplotlib.pyplot as plt

    rates = sorted({rate for rate, _ in results})
    runs = [r for r in RUNS if any(run == r for _, run in results)]
    fig, axes = plt.subplots(len(rates), 3, figsize=(13, 3.2 * len(rates)), squeeze=False)

    def seed_mean(rs: list[dict], tag: str) -> np.ndarray:
        hs = [r["history"].get(tag, []) for r in rs]
        n = min(len(h) for h in hs)
        return np.mean([h[:n] for h in hs], axis=0) if n else np.zeros(0)

    for row, rate in enumerate(rates):
        ax_r1, ax_cos, ax_ccd = axes[row]
        for i, run in enumerate(runs):
            rs = results.get((rate, run))
            if not rs:
                continue
            r1 = seed_mean(rs, "val/t2i_r1")
            ax_r1.plot(np.arange(1, len(r1) + 1), r1, f"C{i}-o", ms=3, label=run)
            for tag, style in (("train/cos_clean", "-"), ("train/cos_noisy", "--"), ("train/cos_neg", ":")):
                v = seed_mean(rs, tag)
                ax_cos.plot(np.arange(1, len(v) + 1), v, f"C{i}{style}",
                            label=run if style == "-" else None)
            p = seed_mean(rs, "train/ccd_precision")
            if p.size:
                ax_ccd.plot(np.arange(1, len(p) + 1), p, f"C{i}-o", ms=3, label=f"{run} precision")
                rc = seed_mean(rs, "train/ccd_recall")
                ax_ccd.plot(np.arange(1, len(rc) + 1), rc, f"C{i}--", label=f"{run} recall")
                for tag, marker in (("train/ccd_bge_precision", "^"), ("train/ccd_tse_precision", "v")):
                    v = seed_mean(rs, tag)
                    if v.size:
                        ax_ccd.plot(np.arange(1, len(v) + 1), v, f"C{i}:{marker}", ms=3,
                                    label=f"{run} {tag.split('_')[1].upper()}-only precision")
        if rate > 0:
            ax_ccd.axhline(1 - rate, color="grey", lw=1, ls=":", label="1 - noise rate")
        ax_r1.set_ylabel(f"noise {rate:g}\nval R@1 (%)")
        ax_cos.set_ylabel("BGE cosine")
        ax_ccd.set_ylabel("CCD clean labels")
        ax_ccd.set_ylim(0, 1.02)
        for ax in (ax_r1, ax_cos, ax_ccd):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        ax_r1.legend(fontsize=7)
        if row == 0:
            ax_r1.set_title("val R@1")
            ax_cos.set_title("train pairs: clean (solid), noisy (dashed), negatives (dotted)")
            ax_ccd.set_title("CCD labels vs ground truth")
        if ax_ccd.lines:
            ax_ccd.legend(fontsize=7)
    fig.suptitle(f"RDE on SynthPedes, per epoch (mean over seeds {args.seeds})")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=110)
    plt.close(fig)


def main() -> None:
    """Runs the study (resumable) and prints the results table."""
    args = parse_args()
    # seed-major, so that a study stopped early (a time limit) has complete seeds
    # (the oracle at rate 0 trusts every pair: the same run as tal_no_ccd, so it is skipped)
    grid = [(rate, run, seed) for seed in args.seeds for rate in args.rates for run in args.runs
            if not (rate == 0 and run == "oracle" and "tal_no_ccd" in args.runs)]
    todo = [g for g in grid if args.force or not os.path.exists(os.path.join(run_dir(args.out, *g), "done"))]
    if todo and not args.summarise_only:
        prepare_world(args)
        train_all(args, todo)
    results: dict = {}
    for rate, run, seed in sorted(grid, key=lambda g: (args.rates.index(g[0]), args.runs.index(g[1]), g[2])):
        if os.path.exists(os.path.join(run_dir(args.out, rate, run, seed), "done")):
            results.setdefault((rate, run), []).append(read_run(run_dir(args.out, rate, run, seed)))
    if not results:
        raise SystemExit(f"no finished runs under {args.out}")
    print(summarise(args, results))


if __name__ == "__main__":
    main()
