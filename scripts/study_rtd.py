"""RTD on SynthCIR: does tuning the query text encoder help zero-shot composed retrieval?

For each seed, through the CLI (``experiments/rtd/*_synth.yaml``):

1. a SynthCIR world (``mmembed-data synth-cir --seed S``: 20% of the 120 attribute combinations held out
   as test targets, one paraphrase per attribute held out for the test queries);
2. a tiny CLIP trained on the seen combinations' renders and captions (``clip_synth.yaml``);
3. LinCIR's phi on the seen captions only (``experiments/lincir/synth_cir.yaml``);
4. RTD on rule-based text triplets of the seen captions (``rtd_synth.yaml``).

Then, on the held-out test queries (reference: a seen combination; target: a held-out one; text: the
held-out paraphrase), Lightning-free with :mod:`mmembed.eval.cir`:

* **base**: the frozen text encoder with LinCIR's phi (zero-shot CIR);
* **+RTD**: the RTD-tuned query encoder with the same phi and the same gallery features;
* **+RTD without frozen anchor** (``--variants no_anchor``, the default): the paper's ablation, where
  the trainable tower also encodes the anchors (``frozen_anchor: false``);
* **oracle**: the target's own caption through the frozen text encoder (no reference image): the
  ceiling of a text query in this CLIP.

Metrics: CIRR-style (reference removed; R@1/5/10 on the exact target render, R_subset@1 within
the six same-shape members), CIRCO-style mAP@5/10 with every render of the target combination as
a ground truth, and caption-to-image R@1 (every render's caption against all 360 renders; a hit is
any render of the caption's combination) with the frozen and the tuned text encoder.

    python scripts/study_rtd.py --seeds 0 1 2 --jobs 2    # the table in mmembed/methods/rtd/README.md
    python scripts/study_rtd.py --summarise-only          # tables and plot from finished runs

Writes ``<out>/summary.json``, ``<out>/summary.md`` and ``docs/rtd/study.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmembed.eval.runs import Job, run_jobs

METRICS = [("cirr_r1", "CIRR R@1"), ("cirr_r5", "CIRR R@5"), ("cirr_r10", "CIRR R@10"),
           ("cirr_subset_r1", "CIRR Rs@1"), ("circo_map5", "CIRCO mAP@5"), ("circo_map10", "CIRCO mAP@10")]
METHODS = [("base", "LinCIR (base)"), ("rtd", "LinCIR + RTD"), ("no_anchor", "+ RTD without frozen anchor"),
           ("oracle", "oracle (target caption)")]
# RTD ablations run after the main chain, on the same world, CLIP and phi (run folder rtd_<name>)
VARIANTS = {"no_anchor": ["--model.init_args.frozen_anchor=false"]}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmembed", *args]


def _paths(out: Path, seed: int) -> tuple[Path, Path, list[str], list[str], list[str]]:
    folder = out / f"seed{seed}"
    world = folder / "synth_cir"
    logger = ["--trainer.logger.init_args.save_dir", str(folder), "--trainer.logger.init_args.version", "0"]
    clip = folder / "clip" / "version_0" / "open_clip_model.pt"
    phi = folder / "lincir" / "version_0" / "phi.pt"
    data = [f"--data.init_args.root={world}", f"--data.init_args.captions={world}/synth_captions.json"]
    rtd = [f"--model.init_args.encoder.init_args.pretrained={clip}", f"--model.init_args.phi_checkpoint={phi}", *data]
    return folder, world, logger, data, rtd


def variant_job(out: Path, seed: int, variant: str, extra: list[str]) -> Job:
    """An RTD ablation on a finished seed (run folder ``rtd_<variant>``)."""
    folder, _, logger, _, rtd = _paths(out, seed)
    command = _cli("fit", "-c", "experiments/rtd/rtd_synth.yaml", f"--seed_everything={seed}", *logger,
                   f"--trainer.logger.init_args.name=rtd_{variant}", *rtd, *VARIANTS[variant], *extra)
    return Job(f"seed {seed} {variant}", str(folder / f"rtd_{variant}"), [command])


def seed_jobs(out: Path, seed: int, extra: list[str]) -> Job:
    """One seed's chain: world, CLIP, LinCIR, RTD (fixed version folders, so paths are known)."""
    folder, world, logger, data, rtd = _paths(out, seed)
    clip = folder / "clip" / "version_0" / "open_clip_model.pt"
    commands = [
        [sys.executable, "-m", "mmembed.data.synthetic", "synth-cir", "--out", str(world), "--seed", str(seed)],
        _cli("fit", "-c", "experiments/rtd/clip_synth.yaml", f"--seed_everything={seed}", *logger,
             "--trainer.logger.init_args.name=clip", f"--data.init_args.train={world}/clip_train.jsonl",
             f"--data.init_args.val={world}/clip_test.jsonl", f"--data.init_args.test={world}/clip_test.jsonl"),
        _cli("fit", "-c", "experiments/lincir/synth_cir.yaml", f"--seed_everything={seed}", *logger,
             "--trainer.logger.init_args.name=lincir", f"--model.init_args.encoder.init_args.pretrained={clip}",
             *data),
        _cli("fit", "-c", "experiments/rtd/rtd_synth.yaml", f"--seed_everything={seed}", *logger,
             "--trainer.logger.init_args.name=rtd", *rtd, *extra),
    ]
    if world.exists():  # rerun after a failure: keep the world
        commands = commands[1:]
    return Job(f"seed {seed}", str(folder), commands)


def evaluate_seed(folder: Path) -> dict[str, dict[str, float]]:
    """Metrics of base / +RTD / oracle on the held-out test queries of one seed."""
    import torch
    import torch.nn.functional as F

    from mmembed.data.cir import read_cirr
    from mmembed.eval.cir import cir_metrics, composed_scores, encode_images
    from mmembed.metrics.cir import circo_map
    from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder
    from mmembed.nn.phi import Phi

    torch.manual_seed(0)
    world = folder / "synth_cir"

    def load(directory: Path, stem: str) -> OpenCLIPDualEncoder:
        cfg = json.loads((directory / f"{stem}_config.json").read_text())
        return OpenCLIPDualEncoder(model_config=cfg, pretrained=str(directory / f"{stem}_model.pt"),
                                   train_augment="none").eval()

    base = load(folder / "clip" / "version_0", "open_clip")
    tuned = {"rtd": load(folder / "rtd" / "version_0", "open_clip_query")}
    for variant in VARIANTS:
        if (folder / f"rtd_{variant}" / "version_0" / "open_clip_query_model.pt").is_file():
            tuned[variant] = load(folder / f"rtd_{variant}" / "version_0", "open_clip_query")
    phi = Phi.load(folder / "lincir" / "version_0" / "phi.pt").eval()
    split = read_cirr(world, "test1")
    records = {r["pairid"]: r for r in json.loads((world / "captions" / "cap.rc2.test1.json").read_text())}
    position = split.position
    all_gts = [[position[n] for n in records[q.id]["target_soft"]] for q in split.queries]
    captions = json.loads((world / "synth_captions.json").read_text())
    with torch.no_grad():
        gallery = encode_images(base, split.gallery_paths, progress=False)
        g = F.normalize(gallery, dim=-1)
        out: dict[str, dict[str, float]] = {}
        for name, encoder in (("base", base), *tuned.items()):
            scores = composed_scores(split, gallery, phi, encoder, "cirr")
            out[name] = _metrics(scores, split, all_gts, cir_metrics, circo_map)
        target_text = [captions[split.gallery_names[q.target]]["caption"] for q in split.queries]
        oracle = F.normalize(base.encode_text(base.tokenizer(target_text)).embedding, dim=-1) @ g.T
        out["oracle"] = _metrics(oracle, split, all_gts, cir_metrics, circo_map)
        # caption -> image over every render, hit = any render of the caption's combination
        combo = [n.rsplit("-", 1)[0] for n in split.gallery_names]
        texts = [captions[n]["caption"] for n in split.gallery_names]
        for name, encoder in (("base", base), *tuned.items()):
            t = F.normalize(encoder.encode_text(encoder.tokenizer(texts)).embedding, dim=-1)
            top = (t @ g.T).argmax(dim=1)
            hits = [combo[int(j)] == combo[i] for i, j in enumerate(top)]
            out[name]["caption_r1"] = 100.0 * sum(hits) / len(hits)
    return out


def _metrics(scores, split, all_gts, cir_metrics, circo_map) -> dict[str, float]:
    cirr = cir_metrics(scores, split, "cirr")
    circo = circo_map(scores, all_gts, (5, 10))
    return {**{f"cirr_{k}": v for k, v in cirr.items()}, **{f"circo_{k}": v for k, v in circo.items()}}


def summarise(out: Path, seeds: list[int], plot: Path) -> str:
    import statistics

    per_seed = {}
    for seed in seeds:
        per_seed[seed] = evaluate_seed(out / f"seed{seed}")
        (out / f"seed{seed}" / "metrics.json").write_text(json.dumps(per_seed[seed], indent=1))
    methods = [(m, label) for m, label in METHODS if all(m in per_seed[s] for s in seeds)]

    def cell(method: str, key: str) -> tuple[float, float] | None:
        values = [per_seed[s][method][key] for s in seeds if key in per_seed[s][method]]
        if not values:
            return None
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    keys = [*METRICS, ("caption_r1", "caption->image R@1")]
    lines = [f"| method | {' | '.join(label for _, label in keys)} |", "|---" * (len(keys) + 1) + "|"]
    for method, label in methods:
        cells = []
        for key, _ in keys:
            c = cell(method, key)
            cells.append("n/a" if c is None else f"{c[0]:.1f} ± {c[1]:.1f}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    table = "\n".join(lines)
    seeds_line = ", ".join(str(s) for s in seeds)
    summary = {"seeds": seeds, "per_seed": per_seed,
               "mean_std": {m: {k: cell(m, k) for k, _ in keys} for m, _ in methods}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(f"Seeds {seeds_line}; mean ± std (%), held-out SynthCIR test queries.\n\n{table}\n")
    _plot(per_seed, seeds, keys, methods, plot)
    return table


def _plot(per_seed: dict, seeds: list[int], keys: list[tuple[str, str]], methods: list[tuple[str, str]],
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(11, 3.6))
    width = 0.8 / len(methods)
    colours = {"base": "#9e9e9e", "rtd": "#1b7837", "no_anchor": "#d6604d", "oracle": "#2166ac"}
    for i, (method, label) in enumerate(methods):
        means, stds, xs = [], [], []
        for j, (key, _) in enumerate(keys):
            values = [per_seed[s][method][key] for s in seeds if key in per_seed[s][method]]
            if values:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                means.append(float(np.mean(values)))
                stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
        ax.bar(xs, means, width, yerr=stds, label=label, color=colours[method], capsize=2)
    ax.set_xticks(range(len(keys)), [label for _, label in keys], fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(f"SynthCIR held-out test queries (tiny CLIP, seeds {', '.join(map(str, seeds))}; mean ± std)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/study_rtd")
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained at once")
    parser.add_argument("--plot", default="docs/rtd/study.png")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="RTD ablations run after the main chain")
    parser.add_argument("--summarise-only", action="store_true")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI flags for the RTD stage")
    args = parser.parse_args()
    os.chdir(ROOT)
    out = Path(args.out)
    if not args.summarise_only:
        jobs = [seed_jobs(out, s, args.extra) for s in args.seeds]
        run_jobs([j for j in jobs if not j.done], parallel=args.jobs)
        variants = [variant_job(out, s, v, args.extra) for s in args.seeds for v in args.variants]
        run_jobs([j for j in variants if not j.done], parallel=args.jobs)
    print(summarise(out, args.seeds, Path(args.plot)))
    print(f"written: {out / 'summary.md'}, {args.plot}")


if __name__ == "__main__":
    main()
