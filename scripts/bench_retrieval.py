"""Benchmark mmembed.metrics.retrieval against the usual full-argsort ReID evaluation.

Each variant runs in a fresh subprocess that builds the same seeded data, resets the kernel's peak-RSS
counter (``/proc/self/clear_refs``) and reports wall time and extra peak RSS over its inputs.

Variants:
    matmul      the score matrix multiplication alone, in the same row chunks as ours (the floor)
    ours        retrieval_metrics_from_embeddings (matmul + ranking per chunk)
    ours_scores retrieval_metrics on a precomputed (Q, N) matrix; time and memory of the metric only
    naive       IRRA/RDE ``rank()`` style: similarity, full ``torch.argsort(descending=True)`` of every
                row, gather labels, cumsum for AP / INP (vectorised: no per-row Python loop for INP)

Usage:
    python scripts/bench_retrieval.py --sizes small,large --threads 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {  # name: (queries, gallery, identities); small is the CUHK-PEDES test split
    "small": (6156, 3074, 1000),
    "large": (50_000, 20_000, 6_667),
}
DIM = 512
NOISE = 2.5  # noise norm against unit identity centres: R@1 around 60% at the small size
NAIVE_FULL_LIMIT = 50_000_000  # naive materialises the full Q x N matrix up to this many scores


def make_data(size: str, seed: int):
    """Seeded L2-normalised embeddings with identity structure; queries are ~2 captions per image."""
    import torch

    q, n, ids = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    gallery_labels = torch.cat([torch.arange(ids), torch.randint(0, ids, (n - ids,), generator=g)])
    gallery_labels = gallery_labels[torch.randperm(n, generator=g)]  # (N,) ~n/ids images per identity
    caption_of = torch.cat([torch.arange(n).repeat(q // n), torch.randint(0, n, (q % n,), generator=g)])
    query_labels = gallery_labels[caption_of]  # (Q,) every query has >= 1 positive
    centres = torch.nn.functional.normalize(torch.randn(ids, DIM, generator=g), dim=1)  # (ids, D)

    def embed(labels):
        out = torch.randn(labels.numel(), DIM, generator=g).mul_(NOISE / DIM**0.5)  # (M, D), norm ~NOISE
        return torch.nn.functional.normalize(out.add_(centres[labels]), dim=1)  # (M, D)

    return embed(query_labels), embed(gallery_labels), query_labels, gallery_labels


def naive_rank(sim, q_pids, g_pids, max_rank: int = 10):
    """The common ReID evaluation: full argsort per row. Returns summed R@1/5/10, AP, INP."""
    import torch

    indices = torch.argsort(sim, dim=1, descending=True)  # (B, N) full sort of every row
    matches = g_pids[indices].eq(q_pids.view(-1, 1))  # (B, N)
    del indices
    cmc = matches[:, :max_rank].cumsum(1).clamp_(max=1)  # (B, K)
    hits = cmc[:, [0, 4, 9]].sum(0).double()
    n_rel = matches.sum(1)
    found = matches.cumsum(1)  # (B, N) matches in the top k
    positions = torch.arange(1, sim.shape[1] + 1, dtype=torch.float64, device=sim.device)
    ap = (found / positions * matches).sum(1) / n_rel
    last = (matches * positions).amax(1)  # rank of the last positive
    inp = n_rel / last
    return torch.stack([*hits, ap.sum(), inp.sum()])


def to_metrics(totals, q: int) -> dict[str, float]:
    values = (totals * 100.0 / q).tolist()
    return dict(zip(["r1", "r5", "r10", "map", "minp"], values))


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def worker(spec: dict) -> dict:
    """Run one variant; returns wall time, extra peak RSS and the metrics."""
    import torch

    from mmembed.metrics import retrieval_metrics, retrieval_metrics_from_embeddings

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    query, gallery, ql, gl = (x.to(device) for x in make_data(spec["size"], spec["seed"]))
    cuda = device.type == "cuda"
    q, n = query.shape[0], gallery.shape[0]
    variant, chunk = spec["variant"], spec["chunk_size"]
    scores = query @ gallery.T if variant == "ours_scores" else None  # (Q, N), built before measuring
    naive_block = q if q * n <= NAIVE_FULL_LIMIT else spec["naive_block"]

    def run():
        if variant == "matmul":
            out = torch.empty(min(chunk, q), n, device=device)
            for lo in range(0, q, chunk):
                torch.matmul(query[lo : lo + chunk], gallery.T, out=out[: min(chunk, q - lo)])
            return None
        if variant == "ours":
            return retrieval_metrics_from_embeddings(query, gallery, ql, gl, chunk_size=chunk)
        if variant == "ours_scores":
            return retrieval_metrics(scores, ql, gl, chunk_size=chunk)
        totals = torch.zeros(5, dtype=torch.float64, device=device)
        for lo in range(0, q, naive_block):
            sim = query[lo : lo + naive_block] @ gallery.T  # (B, N)
            totals += naive_rank(sim, ql[lo : lo + naive_block], gl)
        return to_metrics(totals, q)

    warm = slice(0, 64)  # first-call initialisation outside the timing
    retrieval_metrics_from_embeddings(query[warm], gallery, ql[warm], gl, chunk_size=64)
    naive_rank(query[warm] @ gallery.T, ql[warm], gl)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base, how = torch.cuda.memory_allocated() // 1024, "cuda"
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            base, how = rss_kib("VmRSS"), "VmHWM"
        except OSError:
            base, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        metrics = run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if how == "cuda":
        peak = torch.cuda.max_memory_allocated() // 1024
    else:
        peak = rss_kib("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": min(times),
        "peak_mib": max(0, peak - base) / 1024,
        "metrics": metrics,
        "naive_block": naive_block,
        "how": how,
    }


def run_variant(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=env, cwd=root, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"variant {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="small,large", help="comma list of: " + ", ".join(SIZES))
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads per variant")
    parser.add_argument(
        "--chunk-sizes", default=None, help="comma list of chunk sizes for ours; the first is used for the "
        "ratios, matmul and ours_scores (default: the library default, half and double of it)"
    )
    parser.add_argument(
        "--naive-block", type=int, default=2048, help="naive query rows per block when Q*N is large"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (min taken); "
                        "default 3 for small, 1 for large")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak = torch.cuda max allocated)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    from mmembed.metrics.retrieval import _BLOCK_ELEMENTS, DEFAULT_CHUNK_SIZE

    chunks = [DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE // 2, 2 * DEFAULT_CHUNK_SIZE]
    if args.chunk_sizes:
        chunks = [int(c) for c in args.chunk_sizes.split(",")]
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), "unknown CPU")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} threads per variant"
    n_cpu, busy = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    print(f"CPU: {cpu}")
    print(f"torch {torch.__version__}, {n_cpu} usable CPUs, device {args.device} ({where}), "
          f"load average at start {busy:.2f}; D={DIM}, float32, one fresh process per row")
    peak = "RSS (VmHWM reset after building the data)"
    if args.device == "cuda":
        peak = "torch.cuda max allocated"
    if args.device == "cpu" and busy > 0.5 * n_cpu:
        hint = " (try --threads 1)" if args.threads > 1 else ""
        print(f"WARNING: load average {busy:.1f} - other processes share these cores, so timings are noisy; "
              f"multi-threaded torch ops stall on each other there and ours suffers most{hint}.")
    print(f"peak = extra peak {peak} over the inputs; ours_scores times the metric on a prebuilt (Q, N) "
          "matrix; matmul = same row chunks as ours, scores only\n")
    header = (
        f"{'size':<22} {'variant':<20} {'wall s':>9} {'peak MiB':>9} {'/matmul':>8} {'naive/this':>10}  note"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes.split(","):
        q, n, ids = SIZES[size]
        repeats = args.repeats or (3 if size == "small" else 1)
        base = {
            "size": size, "threads": args.threads, "device": args.device, "seed": args.seed,
            "repeats": repeats, "naive_block": args.naive_block, "chunk_size": chunks[0],
        }
        results = {"matmul": run_variant({**base, "variant": "matmul"})}
        for c in chunks:
            results[f"ours chunk={c}"] = run_variant({**base, "variant": "ours", "chunk_size": c})
        results[f"ours_scores chunk={chunks[0]}"] = run_variant({**base, "variant": "ours_scores"})
        results["naive"] = naive = run_variant({**base, "variant": "naive"})
        label = f"{size} {q}x{n}"
        for name, res in results.items():
            note = ""
            if name.startswith("ours") and "scores" not in name:
                c = min(int(name.split("=")[1]), q)
                scratch = c if args.device != "cpu" else min(c, max(1, _BLOCK_ELEMENTS // n))
                note = f"chunk + scratch buffers {(c + scratch) * n * 4 / 2**20:.0f} MiB"
            elif name.startswith("ours_scores"):
                note = "metric only, on the prebuilt matrix"
            elif name == "naive":
                block = res["naive_block"]
                note = "full matrix"
                if block < q:  # sim f32 + argsort i64 + labels i64 + matches + cumsum i64 + AP terms f64
                    note = f"row blocks of {block} (the full matrix would need ~{q * n * 37 / 1e9:.0f} GB)"
            ratio_mm = res["seconds"] / results["matmul"]["seconds"]
            speedup = naive["seconds"] / res["seconds"]
            print(f"{label:<22} {name:<20} {res['seconds']:9.3f} {res['peak_mib']:9.0f} {ratio_mm:8.2f} "
                  f"{speedup:10.2f}  {note}")
            label = ""
        ours = results[f"ours chunk={chunks[0]}"]["metrics"]
        diffs = {
            other: max(abs(ours[k] - results[other]["metrics"][k]) for k in ours)
            for other in results if other not in ("matmul", f"ours chunk={chunks[0]}")
        }
        fast, floor = results[f"ours chunk={chunks[0]}"]["seconds"], results["matmul"]["seconds"]
        print(f"{'':<22} targets: naive/ours = {naive['seconds'] / fast:.1f}x (want >= 3), "
              f"ours/matmul = {fast / floor:.2f}x (want <= 2)")
        print(f"{'':<22} metrics (ours, %): " + ", ".join(f"{k}={v:.3f}" for k, v in ours.items()))
        listed = ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items())
        print(f"{'':<22} max |ours - other| (% points): {listed}")
        print()
    print(f"load average at end {os.getloadavg()[0]:.2f}. naive uses torch.argsort (not stable), ours ranks "
          "ties by lower gallery index; with random float scores exact ties are rare, so differences "
          "should be ~0 (a tie touching a positive can move a metric by ~1e-3 points).")


if __name__ == "__main__":
    main()
