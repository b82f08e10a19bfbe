"""Cost of each LightCLIP term relative to a plain CLIP step, and of the batched token loss.

Builds the model and one batch from a LightCLIP config (default: the Fashion-MNIST one), then
times full training steps (forward, backward, AdamW) of the study's variants in one process,
alternating variants over repeats, and prints the median step time of each as a ratio to
``plain``. It also times ``token_matching_loss`` (forward + backward) against a per-pair loop, the
obvious implementation, on the same tokens.

Example:
    .venv/bin/python scripts/bench_lightclip_step.py --steps 5 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mmembed.methods.lightclip.module import ABLATIONS


def build(config: str, variant: str, batch_size: int) -> tuple[torch.nn.Module, dict]:
    """The module of one variant and a training batch, through the CLI parser."""
    from mmembed.cli import main

    options = [f"--model.init_args.{k}={v}" for k, v in ABLATIONS[variant].items()]
    cli = main(["-c", config, "--trainer.logger=false", "--trainer.callbacks=null",
                f"--data.init_args.batch_size={batch_size}", "--data.init_args.num_workers=0", *options], run=False)
    cli.datamodule.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(cli.datamodule.train_dataloader()))
    return cli.model.train(), batch


def step_times(model: torch.nn.Module, batch: dict, steps: int) -> list[float]:
    """Wall time of ``steps`` training steps (after one warm-up step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        model.compute_loss(batch)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return times


def loop_token_loss(words: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """The per-pair loop: one similarity matrix and one softmax per pair."""
    from mmembed.losses.token_matching import match_tokens

    losses = []
    for i in range(words.shape[0]):
        sim = F.normalize(words[i][mask[i]], dim=-1) @ F.normalize(patches[i], dim=-1).T
        a = torch.as_tensor(match_tokens(sim))
        keep = a.any(1)
        t = a[keep].float() / a[keep].float().sum(1, keepdim=True)
        losses.append(-(t * torch.log_softmax(sim[keep] / tau, 1)).sum(1).mean())
    return torch.stack(losses).mean()


def bench_token_loss(batch_size: int, length: int, patches: int, dim: int, repeats: int) -> tuple[float, float, float]:
    """Median forward+backward seconds of the batched loss and of the loop, and their max difference."""
    from mmembed.losses.token_matching import token_matching_loss

    torch.manual_seed(0)
    w = torch.randn(batch_size, length, dim, requires_grad=True)
    v = torch.randn(batch_size, patches, dim, requires_grad=True)
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    mask[:, 1:7] = True  # six words per caption
    timings: dict[str, list[float]] = {"batched": [], "loop": []}
    values = {}
    for _ in range(repeats):
        for name, fn in (("batched", lambda: token_matching_loss(w, v, mask)), ("loop", lambda: loop_token_loss(w, v, mask))):
            start = time.perf_counter()
            loss = fn()
            loss.backward()
            timings[name].append(time.perf_counter() - start)
            values[name] = float(loss.detach())
            w.grad = v.grad = None
    return (statistics.median(timings["batched"]), statistics.median(timings["loop"]),
            abs(values["batched"] - values["loop"]))


def main() -> None:
    """Times the variants and prints the ratios."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/lightclip/fashion_mnist.yaml")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant and repeat")
    p.add_argument("--repeats", type=int, default=3, help="rounds over the variants (alternating)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config}, batch {args.batch_size}")
    built = {name: build(args.config, name, args.batch_size) for name in ABLATIONS}
    times: dict[str, list[float]] = {name: [] for name in ABLATIONS}
    for _ in range(args.repeats):
        for name, (model, batch) in built.items():
            times[name] += step_times(model, batch, args.steps)
    base = statistics.median(times["plain"])
    print(f"\n{'variant':>8} | {'median step (s)':>15} | vs plain")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>8} | {med:>15.3f} | {med / base:.2f}x")
    fast, slow, diff = bench_token_loss(args.batch_size, 24, 64, 128, args.repeats)
    print(f"\ntoken_matching_loss, B={args.batch_size}, 6 words x 64 patches, D=128, forward + backward: "
          f"batched {fast * 1e3:.1f} ms, per-pair loop {slow * 1e3:.1f} ms ({slow / fast:.1f}x), |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
