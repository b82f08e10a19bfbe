"""LightCLIP ablation study on Fashion-MNIST (zero-shot classification) and SynthPedes (retrieval).

Trains, through the real CLI and with the same towers and budget, five variants of
:class:`mmembed.methods.lightclip.module.LightCLIPModule` per dataset and seed, then tests the
last checkpoint with ``mmembed test``:

* ``plain``: the CLIP loss only (``alpha_max=0``, no L_tok, no L_mlm);
* ``+soft``: progressively softened labels (``alpha_max=0.2``, similarity-weighted);
* ``+tok``: plain + token-level relaxed bipartite matching;
* ``+mlm``: plain + masked language modelling with image fusion;
* ``full``: all three (LightCLIP).

Fashion-MNIST: ``experiments/lightclip/fashion_mnist.yaml`` at the study budget (``--fashion-steps``
steps of batch 128, in one pass over the first ``steps x 128`` training images, or in the fewest
equal passes that fit the 55,000; warm-up then cosine per step); reported on the 10,000 test images: zero-shot top-1 / top-5 (class names x
held-out templates) and class-level caption <-> image R@1. SynthPedes:
``experiments/lightclip/synth_pedes.yaml`` for ``--pedes-epochs`` epochs; reported on the test
identities: caption -> image R@1 / mAP and image -> caption R@1.

Example (the command behind the table in mmembed/methods/lightclip/README.md):
    .venv/bin/python scripts/study_lightclip.py --seeds 0 1 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from mmembed.eval.runs import Job, latest_version, read_scalars, run_jobs
from mmembed.methods.lightclip.module import ABLATIONS

DATASETS = {
    "fashion_mnist": "experiments/lightclip/fashion_mnist.yaml",
    "synth_pedes": "experiments/lightclip/synth_pedes.yaml",
}
METRICS = {  # reported test metrics per dataset (TensorBoard tags of the test run)
    "fashion_mnist": ["test/zeroshot_top1", "test/zeroshot_top5", "test/t2i_r1", "test/i2t_r1"],
    "synth_pedes": ["test/t2i_r1", "test/t2i_map", "test/i2t_r1"],
}


def parse_args() -> argparse.Namespace:
    """Parses the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seed_everything values")
    p.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--fashion-steps", type=int, default=250, help="Fashion-MNIST training steps (batch 128)")
    p.add_argument("--pedes-epochs", type=int, default=8, help="SynthPedes epochs (35 steps of 64 each)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each gets cores / jobs threads)")
    p.add_argument("--out", default="runs/study_lightclip", help="output folder")
    p.add_argument("--summarise-only", action="store_true", help="train nothing; summarise finished runs")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="passed to `mmembed fit` (last)")
    return p.parse_args()


def budget(args: argparse.Namespace, dataset: str) -> list[str]:
    """The study budget's overrides of a dataset config."""
    if dataset == "fashion_mnist":
        # as few passes as fit the 55,000 training images, each over the same first images
        steps, batch = args.fashion_steps, 128
        epochs = math.ceil(steps * batch / 55000)
        if steps % epochs:
            raise SystemExit(f"--fashion-steps {steps} needs {epochs} passes; give a multiple of {epochs}")
        return [f"--data.init_args.batch_size={batch}", f"--data.init_args.max_train={steps // epochs * batch}",
                f"--trainer.max_epochs={epochs}", "--model.init_args.lr_scheduler_interval=step",
                f"--model.init_args.lr_scheduler.init_args.warmup={max(1, steps // 10)}"]
    return [f"--trainer.max_epochs={args.pedes_epochs}"]  # the schedule's total follows the trainer


def job(args: argparse.Namespace, dataset: str, variant: str, seed: int) -> Job:
    """Fit then test one (dataset, variant, seed) through the CLI."""
    folder = os.path.join(args.out, dataset, variant, f"seed{seed}")
    options = [f"--model.init_args.{k}={v}" for k, v in ABLATIONS[variant].items()]
    fit = [sys.executable, "-m", "mmembed", "fit", "-c", DATASETS[dataset], *budget(args, dataset), *options,
           f"--seed_everything={seed}", "--trainer.enable_progress_bar=false",
           f"--trainer.logger.init_args.save_dir={folder}/fit", *args.extra]
    # `mmembed test` of the last checkpoint, with the run's own saved config; the whole test split
    script = ("import sys; from mmembed.cli import main; from mmembed.eval.runs import latest_version; "
              "fit, out, extra = sys.argv[1], sys.argv[2], sys.argv[3:]; sys.argv = sys.argv[:1]; "
              "v = latest_version(fit); main(['test', '-c', v + '/config.yaml', '--ckpt_path', "
              "v + '/checkpoints/last.ckpt', '--trainer.enable_progress_bar=false', "
              "'--trainer.logger.init_args.save_dir=' + out, *extra])")
    test_extra = ["--data.init_args.max_eval=null"] if dataset == "fashion_mnist" else []
    test = [sys.executable, "-c", script, f"{folder}/fit", f"{folder}/test", *test_extra]
    return Job(f"{dataset} {variant} seed {seed}", folder, [fit, test])


def read(args: argparse.Namespace, dataset: str, variant: str, seed: int) -> dict[str, float]:
    """Test metrics of one finished run, plus the last training losses."""
    folder = os.path.join(args.out, dataset, variant, f"seed{seed}")
    test = read_scalars(latest_version(f"{folder}/test"), METRICS[dataset])
    fit = read_scalars(latest_version(f"{folder}/fit"), ["train/ins", "train/tok", "train/mlm_acc", "val/t2i_r1"])
    out = {tag: values[-1] for tag, values in test.items()}
    out.update({tag: values[-1] for tag, values in fit.items()})
    with open(os.path.join(folder, "done")) as f:
        out["seconds"] = float(f.read())
    return out


def fmt(values: list[float]) -> str:
    """mean ± std (population) over seeds."""
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.1f} ± {a.std():.1f}"


def summarise(args: argparse.Namespace, results: dict) -> str:
    """Writes ``results.md``, ``results.json`` and ``study.png``; returns the markdown tables."""
    tables = []
    for dataset in args.datasets:
        tags = METRICS[dataset]
        head = "| variant | " + " | ".join(t.split("/", 1)[1] for t in tags) + " | seeds | minutes / run |"
        lines = [head, "|---" * (len(tags) + 3) + "|"]
        for variant in args.variants:
            rs = results.get((dataset, variant), [])
            if not rs:
                continue
            cells = [fmt([r[t] for r in rs]) for t in tags]
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {len(rs)} | {np.mean([r['seconds'] for r in rs]) / 60:.1f} |")
        tables.append(f"**{dataset}** (test split, %)\n\n" + "\n".join(lines))
    text = "\n\n".join(tables)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"# LightCLIP study\n\nseeds={args.seeds}, fashion_steps={args.fashion_steps}, "
                f"pedes_epochs={args.pedes_epochs}, extra={args.extra}; mean ± std over seeds.\n\n{text}\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({f"{d}/{v}": rs for (d, v), rs in results.items()}, f, indent=1)
    plot(args, results)
    return text


def plot(args: argparse.Namespace, results: dict) -> None:
    """``study.png``: the headline metric of each dataset per variant, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = {"fashion_mnist": ("test/zeroshot_top1", "Fashion-MNIST zero-shot top-1 (%)"),
             "synth_pedes": ("test/t2i_r1", "SynthPedes caption -> image R@1 (%)")}
    datasets = [d for d in args.datasets if any(k[0] == d for k in results)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        tag, title = heads[dataset]
        variants = [v for v in args.variants if (dataset, v) in results]
        for i, variant in enumerate(variants):
            vals = [r[tag] for r in results[(dataset, variant)]]
            ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.6)
            ax.plot([i] * len(vals), vals, "k.", ms=8)
        ax.set_xticks(range(len(variants)), variants)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        lo = min(r[tag] for v in variants for r in results[(dataset, v)])
        ax.set_ylim(max(0.0, lo - 10), None)
    fig.suptitle(f"LightCLIP ablation: same towers and budget, seeds {args.seeds} (dots)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "study.png"), dpi=120)
    plt.close(fig)


def prepare(args: argparse.Namespace) -> None:
    """Writes the SynthPedes world (and checks the Fashion-MNIST files) once, before parallel runs
    could race to do it."""
    from mmembed.cli import main as cli_main

    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI parses only the list below
    try:
        for dataset in args.datasets:
            cli = cli_main(["-c", DATASETS[dataset], "--trainer.logger=false", *args.extra], run=False)
            cli.datamodule.prepare_data()
    finally:
        sys.argv = argv


def main() -> None:
    """Runs the study (resumable: finished runs are kept) and prints the tables."""
    args = parse_args()
    grid = [(d, v, s) for s in args.seeds for d in args.datasets for v in args.variants]  # seed-major
    jobs = [job(args, *g) for g in grid]
    todo = [j for j in jobs if not j.done]
    if todo and not args.summarise_only:
        prepare(args)
        run_jobs(todo, args.jobs)
    results: dict = {}
    for g, j in zip(grid, jobs, strict=True):
        if j.done:
            results.setdefault(g[:2], []).append(read(args, *g))
    if not results:
        raise SystemExit(f"no finished runs under {args.out}")
    print(summarise(args, results))


if __name__ == "__main__":
    main()
