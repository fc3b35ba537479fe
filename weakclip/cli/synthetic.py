"""weakclip synthetic: write a synthetic VOC-layout dataset (the command; the work is weakclip.data.synthetic)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from weakclip.data.classes import VOC_CLASSES
from weakclip.data.io import removed_if_left_empty
from weakclip.data.synthetic import check_out_dir, clear_dataset, make_synthetic_dataset
from weakclip.errors import ArgumentParser, UsageError, cli


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], prog="weakclip synthetic")
    p.add_argument("--out", required=True, help="output folder (VOC layout)")
    p.add_argument("--images", type=int, default=200, help="number of training images")
    p.add_argument("--val", type=int, default=None, help="number of validation images (default images // 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed → identical files)")
    p.add_argument("--classes", type=int, default=5, help="number of foreground classes (K - 1), at most 20")
    p.add_argument("--size", type=int, nargs=2, default=(160, 160), metavar=("H", "W"), help="image size")
    max_size = "if set, sizes vary in size..max-size"
    p.add_argument("--max-size", type=int, nargs=2, default=None, metavar=("H", "W"), help=max_size)
    overwrite = "write into a non-empty --out: deletes the files of a synthetic set there first, nothing else"
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    args = p.parse_args(argv)
    max_fg = len(VOC_CLASSES) - 1
    if not 1 <= args.classes <= max_fg:
        named = "foreground classes (named by the VOC classes)"
        raise UsageError(f"--classes {args.classes}: the synthetic set has 1..{max_fg} {named}")
    if args.images < 1 or (args.val is not None and args.val < 0):
        raise UsageError(f"--images must be >= 1 and --val >= 0, got --images {args.images} --val {args.val}")
    lo, hi = tuple(args.size), tuple(args.max_size or args.size)
    if min(lo) < 16 or hi[0] < lo[0] or hi[1] < lo[1]:
        sizes = f"--size {lo[0]} {lo[1]} / --max-size {hi[0]} {hi[1]}"
        raise UsageError(f"{sizes}: sides must be >= 16 and --max-size >= --size")
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    with removed_if_left_empty(out):  # a run that fails before writing leaves no empty --out
        if args.overwrite and out.is_dir() and (removed := clear_dataset(out)):
            print(f"--overwrite: deleted the {len(removed)} file(s) of the synthetic set in {out}")
        s = make_synthetic_dataset(
            out, args.images, args.seed, args.classes, lo, args.val, hi if args.max_size else None, show_progress=True
        )
    n = f"{s['train_images']} train + {s['val_images']} val images ({s['num_classes']} classes)"
    print(f"wrote {n} to {s['out']} in {s['seconds']:.1f} s")
    print(f"seeds' mIoU: train {100 * s['seed_miou']:.1f} %, val {100 * s['seed_miou_val']:.1f} %")
    print("seeds' IoU per class: " + ", ".join(f"{c} {100 * v:.1f}" for c, v in s["seed_iou_per_class"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
