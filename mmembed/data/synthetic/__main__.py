"""Writers and command line for the embedded synthetic worlds.

Usage::

    python -m mmembed.data.synthetic synth-pedes --out data/SynthPedes --ids 500 --seed 0
    mmembed-data synth-pedes --out data/SynthPedes --ids 500 --seed 0      # console script

SynthPedes is written in the CUHK-PEDES layout (``reid_raw.json`` + ``imgs/``), so the CUHK-PEDES loader reads
it unchanged. The writer lives here, next to its command line; :mod:`mmembed.data.synthetic` re-exports it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mmembed.data.synthetic.pedes import split_sizes, write_synth_pedes


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Builds the ``mmembed-data`` argument parser (one subcommand per synthetic world)."""
    parser = argparse.ArgumentParser(
        prog="mmembed-data", description="Generate the synthetic datasets that ship with mmembed "
        "(also runnable as `python -m mmembed.data.synthetic`). Run `mmembed-data COMMAND --help` for details.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "synth-pedes", help="procedural pedestrians with captions, in the CUHK-PEDES layout",
        description="Write SynthPedes: rendered pedestrian figures (hair, upper/lower garments, shoes, optional "
        "bag/backpack/hat) with CUHK-PEDES-style captions, split by identity into train/val/test. Output: "
        "OUT/reid_raw.json, OUT/imgs/<split>/*.png, OUT/synth_meta.json, OUT/synth_attributes.json. The output "
        "is deterministic for the parameters (independent of --workers). OUT must not exist or be empty.",
        epilog="example: mmembed-data synth-pedes --out data/SynthPedes --ids 500 --seed 0")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to create (must not exist or be empty)")
    p.add_argument("--ids", required=True, type=_int_at_least(1), metavar="N", help="number of identities (>= 1)")
    p.add_argument("--seed", required=True, type=_int_at_least(0), metavar="S", help="generation seed (>= 0)")
    p.add_argument("--images-per-id", type=_int_at_least(1), default=4, metavar="K", help="images per identity (default: %(default)s)")
    p.add_argument("--captions-per-image", type=_int_at_least(1), default=2, metavar="C", help="captions per image (default: %(default)s)")
    p.add_argument("--height", type=_int_at_least(32), default=128, metavar="H", help="image height in pixels (default: %(default)s)")
    p.add_argument("--width", type=_int_at_least(16), default=64, metavar="W", help="image width in pixels (default: %(default)s)")
    p.add_argument("--val-fraction", type=_fraction, default=0.1, metavar="F", help="fraction of ids in val (default: %(default)s)")
    p.add_argument("--test-fraction", type=_fraction, default=0.2, metavar="F", help="fraction of ids in test (default: %(default)s)")
    p.add_argument("--workers", type=_int_at_least(0), default=0, metavar="P",
                   help="rendering processes: 0 = all CPUs (default), 1 = render in this process")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    c = sub.add_parser(
        "synth-cir", help="rendered objects with modification texts, in the CIRR layout",
        description="Write SynthCIR: one object per image (shape, colour, size, position), composed queries that "
        "change one attribute, held-out target combinations and a held-out paraphrase per attribute for the test "
        "queries. Output: OUT/captions/cap.rc2.{train,val,test1}.json, OUT/image_splits/split.rc2.*.json, OUT/img/, "
        "OUT/synth_captions.json, OUT/synth_meta.json, OUT/clip_{train,test}.jsonl (CLIP pretraining lists). "
        "OUT must not exist or be empty.",
        epilog="example: mmembed-data synth-cir --out data/SynthCIR --seed 0")
    c.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to create (must not exist or be empty)")
    c.add_argument("--seed", required=True, type=_int_at_least(0), metavar="S", help="generation seed (>= 0)")
    c.add_argument("--renders", type=_int_at_least(1), default=3, metavar="R", help="images per combination (default: %(default)s)")
    c.add_argument("--holdout", type=_fraction, default=0.2, metavar="F",
                   help="share of combinations held out as test targets (default: %(default)s)")
    c.add_argument("--queries-per-combo", type=_int_at_least(1), default=4, metavar="Q",
                   help="queries drawn per reference combination (default: %(default)s)")
    c.add_argument("--size", type=_int_at_least(16), default=32, metavar="PX", help="image side (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mmembed.data.synthetic`` and the ``mmembed-data`` console script.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        Exit status: 0 on success, 1 if the dataset could not be written, 130 if interrupted. Invalid arguments
        exit with status 2 through argparse.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "synth-pedes":
        start = time.perf_counter()
        try:
            split_sizes(args.ids, args.val_fraction, args.test_fraction)
        except ValueError as err:
            parser.error(f"synth-pedes: {err}")
        try:
            out = write_synth_pedes(args.out, args.ids, args.seed, args.images_per_id, args.captions_per_image,
                                    (args.height, args.width), args.val_fraction, args.test_fraction,
                                    workers=args.workers, progress=not args.quiet)
        except (FileExistsError, ValueError, OSError) as err:
            print(f"mmembed-data: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("mmembed-data: interrupted; nothing was written", file=sys.stderr)
            return 130
        if not args.quiet:
            sizes = split_sizes(args.ids, args.val_fraction, args.test_fraction)
            n_img = args.ids * args.images_per_id
            print(f"wrote SynthPedes to {out}: {args.ids} ids ({sizes['train']} train / {sizes['val']} val / "
                  f"{sizes['test']} test), {n_img} images, {n_img * args.captions_per_image} captions "
                  f"in {time.perf_counter() - start:.1f} s")
    if args.command == "synth-cir":
        from mmembed.data.synthetic.cir import (
            COLOURS,
            POSITIONS,
            SHAPES,
            SIZES,
            write_synth_cir,
        )

        try:
            meta = write_synth_cir(args.out, args.seed, args.renders, args.holdout, args.queries_per_combo, args.size)
        except (FileExistsError, ValueError, OSError) as err:
            print(f"mmembed-data: error: {err}", file=sys.stderr)
            return 1
        combos = len(SHAPES) * len(COLOURS) * len(SIZES) * len(POSITIONS)
        print(f"wrote SynthCIR to {args.out}: {combos * args.renders} images, {len(meta['held_out'])} held-out combinations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
