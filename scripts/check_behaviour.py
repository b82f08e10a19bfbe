"""Fixed-seed fits of every method's tiny config through the real CLI; prints their test metrics as JSON.

Run it on two commits and compare the outputs to show that a refactor kept behaviour:

    python scripts/check_behaviour.py --out runs/behaviour.json
    python scripts/check_behaviour.py --compare runs/behaviour_before.json runs/behaviour.json

Each run fits a smoke config (tiny random-weight towers on a tiny SynthPedes or SynthCIR world, seed 0,
2 epochs or a few steps) and then tests the last checkpoint from the saved ``config.yaml``. Metrics are
printed with 4 decimals; ``--compare`` prints both files side by side and exits 1 on any difference larger
than ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
TINY_CIR = ('{"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, '
            '"head_width": 16}, "text_cfg": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}}')


def _config(*candidates: str) -> str:
    """The first of several config paths that exists (configs may move between the two commits compared)."""
    for c in candidates:
        if (EXP / c).is_file():
            return str(EXP / c)
    raise FileNotFoundError(f"none of {candidates} under {EXP}")


def _fit_test(main, config: str, tmp: Path, name: str, extra: list[str]) -> dict[str, float]:
    common = [f"--trainer.logger.init_args.save_dir={tmp / 'runs' / name}", "--trainer.enable_progress_bar=false"]
    fit = main(["fit", "-c", config, *common, *extra])
    run = Path(fit.trainer.log_dir)
    test = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    out = {k: round(float(v), 4) for k, v in sorted(test.trainer.callback_metrics.items()) if k.startswith("test/")}
    out.update({k: round(float(v), 4) for k, v in sorted(fit.trainer.callback_metrics.items())
                if k in ("train/loss", "train/loss_epoch")})
    return out


def run_all(tmp: Path, only: list[str] | None) -> dict[str, dict[str, float]]:
    import torch

    from mmembed.cli import main

    torch.set_num_threads(2)
    pedes = [f"--data.init_args.root={tmp / 'synth_pedes'}"]
    runs = {
        "clip": (_config("smoke/clip.yaml"), pedes + ["--trainer.max_epochs=2"]),
        "rde": (_config("smoke/rde.yaml"), pedes),
        "irra": (_config("smoke/irra.yaml"), pedes + ["--trainer.max_epochs=2"]),
        "lightclip": (_config("smoke/lightclip.yaml"), pedes + ["--trainer.max_epochs=2"]),
    }
    results: dict[str, dict[str, float]] = {}
    for name, (config, extra) in runs.items():
        if only and name not in only:
            continue
        results[name] = _fit_test(main, config, tmp, name, extra)
        print(name, json.dumps(results[name]), flush=True)
    if not only or {"lincir", "rtd"} & set(only):
        from mmembed.data.synthetic.cir import write_synth_cir

        world = tmp / "synth_cir"
        write_synth_cir(world, seed=0)
        common = [f"--data.init_args.root={world}", f"--data.init_args.captions={world}/synth_captions.json",
                  f"--model.init_args.encoder.init_args.model_config={TINY_CIR}", "--data.init_args.batch_size=16",
                  "--trainer.max_steps=6", "--trainer.val_check_interval=3"]
        lincir_cfg = _config("lincir/synth_cir.yaml", "rtd/lincir_synth.yaml")
        results["lincir"] = _fit_test(main, lincir_cfg, tmp, "lincir", common)
        print("lincir", json.dumps(results["lincir"]), flush=True)
        phi = next((tmp / "runs" / "lincir").rglob("phi.pt"))
        results["rtd"] = _fit_test(main, _config("rtd/rtd_synth.yaml"), tmp, "rtd",
                                   common + [f"--model.init_args.phi_checkpoint={phi}"])
        print("rtd", json.dumps(results["rtd"]), flush=True)
    return results


def compare(a: Path, b: Path, tol: float) -> int:
    before, after = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    print(f"{'run':10s} {'metric':28s} {'before':>10s} {'after':>10s}")
    for run in sorted(set(before) | set(after)):
        for key in sorted(set(before.get(run, {})) | set(after.get(run, {}))):
            x, y = before.get(run, {}).get(key), after.get(run, {}).get(key)
            same = x is not None and y is not None and abs(x - y) <= tol
            bad += not same
            print(f"{run:10s} {key:28s} {x!s:>10s} {y!s:>10s} {'' if same else '  <-- differs'}")
    print(f"{bad} difference(s)")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the metrics here as JSON")
    parser.add_argument("--only", nargs="*", help="subset of: clip rde irra lightclip lincir rtd")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare, args.tol)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(Path(tmp), args.only)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
