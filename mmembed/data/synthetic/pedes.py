"""SynthPedes writer: renders identities and writes them in the CUHK-PEDES layout."""

from __future__ import annotations

import json
import numbers
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SYNTH_PEDES_VERSION = 1
SPLITS = ("train", "val", "test")
_STREAM_IDS, _STREAM_IMAGES, _STREAM_CAPTIONS = 0, 1, 2  # independent random streams per seed


def split_sizes(num_ids: int, val_fraction: float = 0.1, test_fraction: float = 0.2) -> dict[str, int]:
    """Number of identities per split.

    With ``num_ids >= 3`` every split with a positive fraction gets at least one identity; with 2 identities
    the split is train/test, with 1 it is train only.

    Args:
        num_ids: Total number of identities (>= 1).
        val_fraction: Fraction of identities in val, in ``[0, 1)``.
        test_fraction: Fraction of identities in test, in ``[0, 1)``.

    Returns:
        ``{"train": n, "val": n, "test": n}`` summing to ``num_ids``.
    """
    if num_ids < 1:
        raise ValueError(f"num_ids must be >= 1, got {num_ids}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and their sum < 1, got {val_fraction} and {test_fraction}")
    if num_ids < 3:
        return {"train": 1, "val": 0, "test": num_ids - 1}
    n_val = max(1, int(num_ids * val_fraction + 0.5)) if val_fraction > 0 else 0
    n_test = max(1, int(num_ids * test_fraction + 0.5)) if test_fraction > 0 else 0
    if num_ids - n_val - n_test < 1:
        raise ValueError(f"no training identity left with {num_ids} ids, {n_val} val and {n_test} test")
    return {"train": num_ids - n_val - n_test, "val": n_val, "test": n_test}


def synth_pedes_meta(num_ids: int, seed: int, images_per_id: int = 4, captions_per_image: int = 2,
                     image_size: tuple[int, int] = (128, 64), val_fraction: float = 0.1,
                     test_fraction: float = 0.2) -> dict[str, Any]:
    """The ``synth_meta.json`` content that :func:`write_synth_pedes` writes for these parameters.

    Args:
        num_ids: Number of identities.
        seed: Generation seed.
        images_per_id: Images per identity.
        captions_per_image: Captions per image.
        image_size: ``(height, width)``.
        val_fraction: Fraction of identities in val.
        test_fraction: Fraction of identities in test.

    Returns:
        A JSON-ready dict with the dataset name, format version, parameters and split sizes.
    """
    return {
        "dataset": "SynthPedes", "version": SYNTH_PEDES_VERSION, "num_ids": num_ids, "seed": seed,
        "images_per_id": images_per_id, "captions_per_image": captions_per_image, "image_size": list(image_size),
        "val_fraction": val_fraction, "test_fraction": test_fraction,
        "split_ids": split_sizes(num_ids, val_fraction, test_fraction),
    }


def synth_pedes_matches(root: str | os.PathLike[str], num_ids: int, seed: int, images_per_id: int = 4,
                        captions_per_image: int = 2, image_size: tuple[int, int] = (128, 64),
                        val_fraction: float = 0.1, test_fraction: float = 0.2) -> bool:
    """Whether ``root`` holds a complete SynthPedes folder written with exactly these parameters and version.

    Args:
        root: Dataset folder (the ``out_dir`` given to :func:`write_synth_pedes`).
        num_ids: Number of identities.
        seed: Generation seed.
        images_per_id: Images per identity.
        captions_per_image: Captions per image.
        image_size: ``(height, width)``.
        val_fraction: Fraction of identities in val.
        test_fraction: Fraction of identities in test.

    Returns:
        ``True`` if ``synth_meta.json`` equals :func:`synth_pedes_meta` for these parameters and
        ``reid_raw.json`` exists.
    """
    root = Path(root)
    try:
        meta = json.loads((root / "synth_meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = synth_pedes_meta(num_ids, seed, images_per_id, captions_per_image, image_size, val_fraction,
                                test_fraction)
    return meta == expected and (root / "reid_raw.json").is_file()


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not an empty folder; SynthPedes never modifies an existing dataset. "
            "Pick a new --out folder, or delete this one yourself if it is a stale copy."
        )


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")


def write_synth_pedes(out_dir: str | os.PathLike[str], num_ids: int, seed: int, images_per_id: int = 4,
                      captions_per_image: int = 2, image_size: tuple[int, int] = (128, 64),
                      val_fraction: float = 0.1, test_fraction: float = 0.2, workers: int = 1,
                      progress: bool = False) -> Path:
    """Writes a SynthPedes dataset in the CUHK-PEDES layout.

    Files: ``reid_raw.json`` (list of ``{"id", "file_path", "captions", "split", "processed_tokens"}``, ids
    1-based and contiguous, train ids first, then val, then test; ``file_path`` is relative to ``imgs/``),
    ``imgs/<split>/<id>_<k>.png``, ``synth_meta.json`` (see :func:`synth_pedes_meta`) and
    ``synth_attributes.json`` (the attributes of every id). The output is byte-for-byte deterministic for the
    parameters, whatever ``workers`` is. Everything is written into a hidden sibling folder that is renamed to
    ``out_dir`` at the end, so an interrupted run leaves no partial dataset.

    Args:
        out_dir: Target folder; must not exist or be empty. Parent folders are created.
        num_ids: Number of identities (>= 1).
        seed: Generation seed (>= 0).
        images_per_id: Images per identity (>= 1).
        captions_per_image: Captions per image (>= 1).
        image_size: ``(height, width)`` of every image, at least ``(32, 16)``.
        val_fraction: Fraction of identities in val (see :func:`split_sizes`).
        test_fraction: Fraction of identities in test.
        workers: Rendering processes; 1 renders in this process, 0 uses every CPU.
        progress: Show a rich progress bar on stderr.

    Returns:
        ``Path(out_dir)``.

    Raises:
        FileExistsError: If ``out_dir`` exists and is not an empty folder (it is left untouched).
        ValueError: On invalid parameters.
    """
    import numpy as np

    from mmembed.data.synthetic.captions import make_captions
    from mmembed.data.synthetic.persons import render_to_file, sample_identities

    for name, value, low in (("num_ids", num_ids, 1), ("seed", seed, 0), ("images_per_id", images_per_id, 1),
                             ("captions_per_image", captions_per_image, 1), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    num_ids, seed, images_per_id, captions_per_image, workers = (
        int(v) for v in (num_ids, seed, images_per_id, captions_per_image, workers))
    height, width = (int(v) for v in image_size)
    if height < 32 or width < 16:
        raise ValueError(f"image_size (height, width) must be at least (32, 16), got {tuple(image_size)}")
    meta = synth_pedes_meta(num_ids, seed, images_per_id, captions_per_image, (height, width), val_fraction,
                            test_fraction)  # validates the split fractions
    out = Path(out_dir)
    _check_target(out)

    identities = sample_identities(num_ids, np.random.default_rng([seed, _STREAM_IDS]))
    split_of = [s for s in SPLITS for _ in range(meta["split_ids"][s])]
    id_width, k_width = max(4, len(str(num_ids))), max(2, len(str(images_per_id)))
    records, tasks = [], []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    try:
        for split in SPLITS:
            (tmp / "imgs" / split).mkdir(parents=True)
        for pid, (identity, split) in enumerate(zip(identities, split_of), start=1):
            for k in range(1, images_per_id + 1):
                rel = f"{split}/{pid:0{id_width}d}_{k:0{k_width}d}.png"
                caps = make_captions(identity, np.random.default_rng([seed, _STREAM_CAPTIONS, pid, k]),
                                     captions_per_image)
                records.append({"id": pid, "file_path": rel, "captions": caps, "split": split,
                                "processed_tokens": []})
                tasks.append((identity, (seed, _STREAM_IMAGES, pid, k), (height, width), str(tmp / "imgs" / rel)))
        _run_tasks(render_to_file, tasks, workers or (os.cpu_count() or 1), progress)
        _dump(tmp / "reid_raw.json", records)
        _dump(tmp / "synth_attributes.json", [{"id": i, **p.to_dict()} for i, p in enumerate(identities, 1)])
        _dump(tmp / "synth_meta.json", meta)
        _check_target(out)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _run_tasks(fn: Callable[[Any], None], tasks: list[Any], workers: int, progress: bool) -> None:
    """Runs ``fn`` on every task, in a process pool when ``workers > 1``, with an optional progress bar."""
    pool = None
    if workers > 1 and len(tasks) > 1:
        import multiprocessing as mp

        # fork before the progress bar starts its refresh thread; workers only need numpy and PIL
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(min(workers, len(tasks)))
    bar, handle = None, None
    try:
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

            bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            handle = bar.add_task("rendering SynthPedes", total=len(tasks))
            bar.start()
        if pool is None:
            results: Iterable[None] = map(fn, tasks)
        else:
            results = pool.imap_unordered(fn, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8))))
        for _ in results:
            if bar is not None and handle is not None:
                bar.advance(handle)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if bar is not None:
            bar.stop()
        if pool is not None:
            pool.terminate()
