"""weakclip evaluate: mIoU of predicted masks against ground truth (the command; the work is weakclip.masks.evaluate)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from weakclip.data.io import write_text_atomic
from weakclip.errors import ArgumentParser, UsageError, cli
from weakclip.masks import evaluate as ev


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="weakclip-evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--pred", required=True, help="folder of predicted masks <name>.png")
    ap.add_argument("--gt", required=True, help="folder of ground-truth masks <name>.png (255 = ignore)")
    k = ap.add_mutually_exclusive_group()
    k.add_argument("--num-classes", type=int, help="K (21 = the VOC names)")
    k.add_argument("--class-names", help="text file, one class name per line (index 0 = background)")
    k.add_argument("--classes", choices=sorted(ev.NAMED_CLASS_LISTS), help="a built-in class list")
    ap.add_argument("--list", help="names to evaluate, one per line (default: every .png in --pred)")
    ap.add_argument("--ignore-index", type=int, default=255)
    ap.add_argument("--json", help="write the metrics as JSON here")
    ap.add_argument("--plot", help="write a per-class IoU bar chart (PNG) here")
    return ap


def _stems(folder: str) -> set[str]:
    return {p.stem for p in Path(folder).glob("*.png") if not p.name.startswith(".")}


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    which = {"class_names_file": args.class_names, "classes": args.classes, "num_classes": args.num_classes}
    try:
        class_names, source = ev.find_class_names([args.pred], args.gt, **which)
        names = ev.read_names(args.list) if args.list else None
        metrics, n = ev.evaluate_dirs(args.pred, args.gt, len(class_names), names, args.ignore_index)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    gt_names = _stems(args.gt)
    unscored = len(gt_names - (set(names) if names is not None else _stems(args.pred)))
    print(ev.format_table(metrics, class_names))
    print(f"{n} images scored; {len(class_names)} classes from {source}")
    if unscored:
        print(f"note: {unscored} of {len(gt_names)} ground-truth images have no prediction and are not scored")
    if args.json:
        extra = {"num_images": n, "gt_without_prediction": unscored, "class_names_from": source}
        write_text_atomic(args.json, json.dumps(metrics.to_dict(class_names) | extra, indent=2) + "\n")
    if args.plot:
        ev.plot_iou(metrics, class_names, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
