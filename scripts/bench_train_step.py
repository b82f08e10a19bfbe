"""Benchmark the Lightning training step of EmbeddingModule against a plain PyTorch loop.

Both loops train the same tiny CLIP (``experiments/quickstart.yaml``: embed_dim 128, ViT 64x32 patch 8,
text ctx 48, width 128, 4+4 layers) with ClipLoss, from the same seed, with the optimizer and param
groups built by ``EmbeddingModule.configure_optimizers`` (AdamW lr 1e-3, wd 0.05), on the same
in-memory batches (``num_workers=0``, no shuffling; only the default collate runs per step).

Variants:
    plain          for batch in loader: compute_loss, zero_grad(set_to_none), backward, step,
                   then ``module.after_optimizer_step()`` (the LogitScale clamp)
    lightning      ``Trainer(logger=False, ...).fit``; ``training_step`` still calls ``self.log``
    lightning+csv  as above with a CSVLogger (``log_every_n_steps=10`` as in the quickstart)

Timing: a callback (Lightning) or the loop itself (plain) takes ``time.perf_counter()`` at the end of
every step. A step's time is the gap between consecutive step ends, so it holds the whole cycle
(batch fetch + collate, every hook, the step, logging bookkeeping); steps ``1..--warmup`` and the
setup/teardown of ``fit`` are excluded. Per run we keep the median step and the mean (timed window /
steps); each variant runs ``--repeats`` times in alternating order and the median over runs is
reported. The headline ratio uses the medians (robust to other processes stealing the CPU).

Both loops clamp right after every ``opt.step()`` (Lightning through ``TrainModule.optimizer_step``),
so the losses must agree.

Usage:
    python scripts/bench_train_step.py --steps 60 --batch-size 64 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

MODEL_CONFIG: dict[str, Any] = {  # experiments/quickstart.yaml
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": [64, 32], "patch_size": 8, "width": 128, "layers": 4, "head_width": 32, "mlp_ratio": 2.0,
    },
    "text_cfg": {
        "context_length": 48, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4, "mlp_ratio": 2.0,
    },
}
EOT = 49407
SEED = 0


class InMemoryPairs(Dataset):
    """Pre-generated random image/text pairs, returned as dicts so the default collate batches them.

    Args:
        n: Number of samples.
        seed: Generator seed.

    Shapes:
        item: image (3, 64, 32) float, text (48,) long with one EOT, label () long, index () long.
    """

    def __init__(self, n: int, seed: int = SEED) -> None:
        g = torch.Generator().manual_seed(seed)
        ctx = MODEL_CONFIG["text_cfg"]["context_length"]
        self.image = torch.randn(n, 3, *MODEL_CONFIG["vision_cfg"]["image_size"], generator=g)  # (N, 3, H, W)
        self.text = torch.zeros(n, ctx, dtype=torch.long)  # (N, L)
        ends = torch.randint(2, ctx, (n,), generator=g)  # EOT position per caption
        for i, end in enumerate(ends.tolist()):
            self.text[i, 0] = EOT - 1  # SOT
            self.text[i, 1:end] = torch.randint(1, EOT - 1, (end - 1,), generator=g)
            self.text[i, end] = EOT
        self.label = torch.randint(0, max(1, n // 2), (n,), generator=g)
        self.index = torch.arange(n)

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image[i], "text": self.text[i], "label": self.label[i], "index": self.index[i]}


def build_module() -> Any:
    """The quickstart EmbeddingModule (no scheduler, no export), initialised from ``SEED``."""
    from mmembed.lit.embedding_module import EmbeddingModule
    from mmembed.losses.contrastive import ClipLoss
    from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder

    torch.manual_seed(SEED)
    encoder = OpenCLIPDualEncoder(model_config=MODEL_CONFIG)
    optimizer = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05)
    return EmbeddingModule(encoder, ClipLoss(init_temperature=0.07), optimizer=optimizer, export_encoder=False)


def make_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    """Same order for every run; one epoch is exactly the run (no epoch boundary)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, drop_last=True)


def run_plain(dataset: Dataset, batch_size: int) -> tuple[list[float], list[float]]:
    """Plain PyTorch loop. Returns (perf_counter at the end of every step, per-step losses)."""
    module = build_module()
    opt = module.configure_optimizers()
    module.train()
    losses: list[torch.Tensor] = []
    ends: list[float] = []
    for batch in make_loader(dataset, batch_size):
        out = module.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        module.after_optimizer_step()  # the module's LogitScale clamp (and EMA, when on)
        losses.append(out["loss"].detach())
        ends.append(time.perf_counter())
    return ends, [float(x) for x in losses]


def run_lightning(dataset: Dataset, batch_size: int, csv: bool) -> tuple[list[float], list[float]]:
    """``Trainer.fit`` of the same module. Returns (perf_counter at the end of every step, losses)."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    class StepClock(pl.Callback):
        """Timestamp the end of every step and keep its loss."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[torch.Tensor] = []

        def on_train_batch_end(
            self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.losses.append(outputs["loss"].detach())
            self.ends.append(time.perf_counter())

    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=len(dataset) // batch_size,
            logger=CSVLogger(tmp) if csv else False, log_every_n_steps=10, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, callbacks=[clock], default_root_dir=tmp,
        )
        trainer.fit(build_module(), train_dataloaders=make_loader(dataset, batch_size))
    return clock.ends, [float(x) for x in clock.losses]


def step_stats(ends: list[float], warmup: int) -> tuple[float, float]:
    """(median, mean) seconds per step over steps ``warmup+1..N``; each step spans end to end."""
    gaps = [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:])]
    return statistics.median(gaps), (ends[-1] - ends[warmup - 1]) / len(gaps)


def main() -> None:
    """Parse arguments, run the variants, print the table and the overhead ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (warm-up included)")
    p.add_argument("--warmup", type=int, default=10, help="leading steps excluded from timing")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--check-steps", type=int, default=5, help="leading losses compared across loops")
    p.add_argument("--no-csv", action="store_true", help="skip the lightning+csv variant")
    args = p.parse_args()
    if not 0 < args.warmup < args.steps or not 0 < args.check_steps <= args.steps:
        p.error("need 0 < --warmup < --steps and 0 < --check-steps <= --steps")
    torch.set_num_threads(args.threads)
    import lightning.pytorch  # noqa: F401  (sets its logger level on import; quiet it afterwards)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for pattern in ("does not have many workers", "no `val_dataloader`", "LeafSpec"):
        warnings.filterwarnings("ignore", f".*{pattern}.*")

    dataset = InMemoryPairs(args.steps * args.batch_size)
    runners = {
        "plain": lambda: run_plain(dataset, args.batch_size),
        "lightning": lambda: run_lightning(dataset, args.batch_size, csv=False),
    }
    if not args.no_csv:
        runners["lightning+csv"] = lambda: run_lightning(dataset, args.batch_size, csv=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"steps {args.steps} (timed {args.warmup + 1}..{args.steps}), repeats {args.repeats}")

    medians: dict[str, list[float]] = {name: [] for name in runners}
    means: dict[str, list[float]] = {name: [] for name in runners}
    losses: dict[str, list[float]] = {}
    for r in range(args.repeats):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            ends, run_losses = runners[name]()
            med, mean = step_stats(ends, args.warmup)
            medians[name].append(med)
            means[name].append(mean)
            losses.setdefault(name, run_losses)
            print(f"  repeat {r + 1}  {name:<14} median {med * 1e3:8.1f} ms/step   mean {mean * 1e3:8.1f} ms/step")

    k = args.check_steps
    ref = losses["plain"][:k]
    print(f"\nloss check, first {k} steps from the same init (plain: {', '.join(f'{x:.6f}' for x in ref)})")
    ok = True
    for name in runners:
        diff = max(abs(a - b) for a, b in zip(losses[name][:k], ref))
        diff_all = max(abs(a - b) for a, b in zip(losses[name], losses["plain"]))
        same = len(losses[name]) == len(losses["plain"]) and diff <= 1e-5
        ok &= same
        print(f"  {name:<14} max |diff| {diff:.2e}  {'OK' if same else 'MISMATCH'} (tol 1e-5);"
              f" all {len(losses[name])} steps: {diff_all:.2e}")

    base = {"median": statistics.median(medians["plain"]), "best": min(medians["plain"]),
            "mean": statistics.median(means["plain"])}
    print(f"\nms/step over steps {args.warmup + 1}..{args.steps}; median: median over runs of each run's median step;"
          f"\nbest: fastest run's median step; mean: median over runs of (timed window / steps)")
    print(f"{'variant':<14} {'median':>8} {'ratio':>6} {'best':>8} {'ratio':>6} {'mean':>8} {'ratio':>6}")
    for name in runners:
        row = {"median": statistics.median(medians[name]), "best": min(medians[name]),
               "mean": statistics.median(means[name])}
        print(f"{name:<14}" + "".join(f" {row[c] * 1e3:8.1f} {row[c] / base[c]:6.3f}" for c in base))
    ratio = statistics.median(medians["lightning"]) / base["median"]
    print(f"\nsame losses: {'yes' if ok else 'NO'}")
    print(f"overhead ratio (lightning / plain): {ratio:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
