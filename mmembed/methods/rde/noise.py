"""Synthetic noisy correspondence: the caption-shuffle index of RDE.

Record ``i`` of a training set keeps its pid and image and receives the
caption of record ``idx[i]``. The index is built with numpy's legacy RNG
exactly as the reference code does, so that with seed 1 it reproduces the
shipped ``noiseindex/{CUHK-PEDES,ICFG-PEDES,RSTPReid}_{0.2,0.5,0.8}.npy``
files:

1. ``np.random.seed(seed)``;
2. ``perm = arange(n)``, shuffled;
3. ``C = perm[:int(rate * n)]`` (the candidates that may move);
4. ``idx = arange(n)``; ``idx[C] =`` a shuffled copy of ``C``.

A local :class:`numpy.random.RandomState` replays the same stream, so the
global numpy RNG is never touched. Records whose caption did not move,
``idx[i] == i``, count as clean; this includes fixed points of the inner
shuffle. Because ``perm`` is shared across rates, the candidate sets are
nested (``C_0.2 ⊂ C_0.5 ⊂ C_0.8``); the noisy sets are nested up to the few
fixed points of the inner shuffle.

Command line (writes an ``int64`` ``.npy`` file, never inside a dataset)::

    python -m mmembed.methods.rde.noise --n 68126 --rate 0.5 --out cuhk_0.5.npy
    python -m mmembed.methods.rde.noise --pedes-root data/CUHK-PEDES \\
        --flavour CUHK-PEDES --rate 0.5 --out noiseindex/CUHK-PEDES_0.5.npy

References:
    RDE, Qin et al., CVPR 2024, https://arxiv.org/abs/2308.09911 (experiments,
    synthetic noise by shuffling captions).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CaptionShuffle",
    "NoiseIndexFile",
    "apply_noise",
    "clean_flags",
    "count_train_records",
    "main",
    "noise_candidates",
    "noise_index",
]

FLAVOUR_NAMES = ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid")


def _check_args(n: int, rate: float, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not math.isfinite(rate):
        raise ValueError(f"rate must be a finite number in [0, 1], got {rate!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")


def _candidates(rng: np.random.RandomState, n: int, rate: float) -> np.ndarray:
    perm = np.arange(n, dtype=np.int64)
    rng.shuffle(perm)  # same draws as np.random.shuffle after np.random.seed
    return perm[: int(rate * n)]  # (n,) -> (int(rate*n),)


def noise_candidates(n: int, rate: float, seed: int = 1) -> np.ndarray:
    """Records eligible to receive another record's caption (step 3 of the recipe).

    Args:
        n: Number of training records.
        rate: Noise rate in ``[0, 1]``.
        seed: Seed of the legacy numpy RNG.

    Returns:
        ``C`` in draw order; ``noise_index`` permutes exactly these records.

    Shapes:
        -> ``(int(rate * n),)`` int64.
    """
    _check_args(n, rate, seed)
    return _candidates(np.random.RandomState(seed), int(n), float(rate))


def noise_index(n: int, rate: float, seed: int = 1) -> np.ndarray:
    """Caption-shuffle index of RDE's synthetic noisy correspondence.

    Record ``i`` receives the caption of record ``idx[i]``. Identical to
    ``np.random.seed(seed)`` followed by the global ``np.random.shuffle`` calls
    of the reference code, but uses a local ``RandomState`` so the global RNG
    state is left untouched. ``rate = 0`` gives the identity.

    Args:
        n: Number of training records (JSON order, then caption order).
        rate: Noise rate in ``[0, 1]``; ``int(rate * n)`` records are shuffled
            among themselves.
        seed: Seed of the legacy numpy RNG (the reference uses 1).

    Returns:
        A permutation of ``arange(n)``.

    Raises:
        ValueError: ``n`` negative or not an integer, ``rate`` outside ``[0, 1]``
            or ``seed`` outside ``[0, 2**32)``.

    Shapes:
        -> ``(n,)`` int64.

    References:
        RDE, CVPR 2024, https://arxiv.org/abs/2308.09911 (synthetic noise).
    """
    _check_args(n, rate, seed)
    rng = np.random.RandomState(seed)
    cand = _candidates(rng, int(n), float(rate))
    moved = cand.copy()
    rng.shuffle(moved)
    idx = np.arange(int(n), dtype=np.int64)
    idx[cand] = moved
    return idx


def _as_index(idx: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"idx must be a 1-D integer array, got shape {arr.shape} and dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def clean_flags(idx: Sequence[int] | np.ndarray) -> np.ndarray:
    """Ground-truth clean flags: record ``i`` is clean iff its caption did not move.

    Args:
        idx: Noise index from :func:`noise_index` (or a loaded ``.npy`` file).

    Returns:
        ``idx[i] == i`` for every record (fixed points of the shuffle are clean).

    Shapes:
        idx ``(n,)`` -> ``(n,)`` bool.
    """
    arr = _as_index(idx)
    return arr == np.arange(arr.shape[0], dtype=np.int64)


def apply_noise(captions: Sequence[str], idx: Sequence[int] | np.ndarray) -> list[str]:
    """Move captions: record ``i`` gets the caption of record ``idx[i]``.

    Pids and images are not touched; only the caption list is permuted.

    Args:
        captions: Training captions, one per record.
        idx: Noise index of the same length.

    Returns:
        The noisy caption list (a new list; the input is unchanged).

    Raises:
        ValueError: length mismatch or an index outside ``[0, n)``.

    Shapes:
        captions ``(n,)``, idx ``(n,)`` -> ``(n,)``.
    """
    arr = _as_index(idx)
    if arr.shape[0] != len(captions):
        raise ValueError(f"idx has {arr.shape[0]} entries but there are {len(captions)} captions")
    if arr.size and (arr.min() < 0 or arr.max() >= len(captions)):
        raise ValueError(f"idx values must lie in [0, {len(captions)}), got [{arr.min()}, {arr.max()}]")
    return [captions[j] for j in arr.tolist()]


def count_train_records(root: str | Path, flavour: str) -> int:
    """Number of training records of a PEDES-style dataset (sum of train captions).

    Images are not checked; only the annotation file is read.

    Args:
        root: Dataset folder holding the annotation JSON.
        flavour: ``CUHK-PEDES``, ``ICFG-PEDES`` or ``RSTPReid``.

    Returns:
        ``sum(len(e.captions))`` over entries whose split is ``"train"``.
    """
    from mmembed.data.reid import load_pedes_annotations  # lazy: pulls in torch

    entries = load_pedes_annotations(root, flavour, check_images=False)  # type: ignore[arg-type]
    return sum(len(e.captions) for e in entries if e.split == "train")


class CaptionShuffle:
    """Noisy-correspondence generator for a datamodule's ``caption_noise`` option.

    ``CaptionShuffle(rate, seed)(n)`` is :func:`noise_index` ``(n, rate, seed)``.

    Args:
        rate: Noise rate in ``[0, 1]``.
        seed: Legacy numpy seed (the reference uses 1).
    """

    def __init__(self, rate: float, seed: int = 1) -> None:
        _check_args(0, rate, seed)
        self.rate, self.seed = rate, seed

    def __call__(self, n: int) -> np.ndarray:
        return noise_index(n, self.rate, self.seed)


class NoiseIndexFile:
    """Caption index read from a ``.npy`` file (e.g. the reference's ``noiseindex/*.npy``).

    Args:
        path: The file; it must hold a permutation of ``range(n)``.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, n: int) -> np.ndarray:
        idx = _as_index(np.load(self.path))
        if idx.shape[0] != n:
            raise ValueError(f"{self.path}: {idx.shape[0]} entries, but the training split has {n} records")
        return idx


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmembed.methods.rde.noise",
        description="Write RDE's synthetic-noise caption index (int64 .npy). Dataset folders are never written to.",
    )
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--n", type=int, help="number of training records")
    size.add_argument("--pedes-root", type=Path, help="dataset folder; the train records are counted from its JSON")
    p.add_argument("--flavour", choices=FLAVOUR_NAMES, help="dataset flavour (required with --pedes-root)")
    p.add_argument("--rate", type=float, required=True, help="noise rate in [0, 1]")
    p.add_argument("--seed", type=int, default=1, help="legacy numpy seed (default 1, as the reference)")
    p.add_argument("--out", type=Path, required=True, help="output .npy file, outside any dataset folder")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    return p


def _is_inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def _save_atomic(out: Path, idx: np.ndarray) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, idx)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 1 on a refused or invalid request (message on stderr).
    """
    args = _build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 1

    out: Path = args.out
    if out.suffix != ".npy":
        return fail(f"--out must end with .npy, got {out}")
    if args.pedes_root is not None:
        if args.flavour is None:
            return fail("--flavour is required with --pedes-root")
        if _is_inside(out, args.pedes_root):
            return fail(f"refusing to write {out} inside the dataset folder {args.pedes_root}; datasets are never modified")
    elif args.flavour is not None:
        return fail("--flavour only applies with --pedes-root")
    if out.exists() and not args.force:
        return fail(f"{out} already exists; pass --force to overwrite it")
    if out.exists() and not out.is_file():
        return fail(f"{out} exists and is not a regular file")
    try:
        n = args.n if args.pedes_root is None else count_train_records(args.pedes_root, args.flavour)
        idx = noise_index(n, args.rate, args.seed)
    except (ValueError, OSError) as exc:  # argument checks; DatasetFormatError is a ValueError
        return fail(str(exc))
    _save_atomic(out, idx)
    noisy = int((~clean_flags(idx)).sum())
    print(f"wrote {out}: n={n} rate={args.rate} seed={args.seed} noisy={noisy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
