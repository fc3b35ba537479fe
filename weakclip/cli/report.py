"""weakclip report: one HTML page comparing mask runs against the ground truth (the command)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from weakclip.errors import ArgumentParser, UsageError, cli
from weakclip.masks.evaluate import NAMED_CLASS_LISTS, find_class_names, read_names
from weakclip.masks.report import DEFAULT_GALLERY, DEFAULT_IGNORE_HEAVY, DEFAULT_THUMB, make_report
from weakclip.progress import add_progress_arguments, progress_options


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="weakclip report", description=__doc__.split("\n\n")[0].replace("``", ""))
    ap.add_argument("runs", nargs="+", metavar="RUN", help="folders of masks <name>.png, in order (first → last)")
    ap.add_argument("--gt", required=True, help="folder of ground-truth masks <name>.png (255 = ignore)")
    ap.add_argument("--out", required=True, help="folder for index.html, assets/, report.json, per_image.csv")
    ap.add_argument("--list", help="image names, one per line (default: every .png in --gt)")
    ap.add_argument("--names", help="comma-separated run names (default: from their config files, else folder names)")
    roots = "folder of the images (default: from the runs' config files, else JPEGImages beside --gt)"
    ap.add_argument("--image-root", help=roots)
    k = ap.add_mutually_exclusive_group()
    k.add_argument("--classes", choices=sorted(NAMED_CLASS_LISTS), help="a built-in class list")
    k.add_argument("--class-names", help="text file, one class name per line (index 0 = background)")
    k.add_argument("--num-classes", type=int, help="K (21 = the VOC names)")
    for flag, default, metavar, what in (
        ("--gallery", DEFAULT_GALLERY, "N", "images per gallery section"),
        ("--thumb", DEFAULT_THUMB, "PX", "thumbnail size, longer side"),
        ("--ignore-heavy", DEFAULT_IGNORE_HEAVY, "SHARE", "a mask with more than this share of 255 pixels is listed"),
    ):
        ap.add_argument(flag, type=type(default), default=default, metavar=metavar, help=f"{what} (default {default})")
    ap.add_argument("--ignore-index", type=int, default=255)
    add_progress_arguments(ap)
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    which = dict(class_names_file=args.class_names, classes=args.classes, num_classes=args.num_classes)
    try:
        class_names, source = find_class_names(args.runs, args.gt, **which)
        images = read_names(args.list) if args.list else None
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    kw = {k: getattr(args, k) for k in ("image_root", "gallery", "thumb", "ignore_heavy", "ignore_index")}
    kw.update(images=images, class_names=class_names, class_source=source)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    report = make_report(args.gt, args.runs, args.out, run_names=names, progress_options=progress_options(args), **kw)
    for info, st in zip(report.runs, report.stats):
        scored = f"({st.scored} images, {len(st.missing)} without mask)"
        print(f"{info.name:<40} mIoU {100 * st.metrics.miou:6.2f}  {scored}")
    print(f"report: {report.index} ({len(report.files)} files, {report.size_bytes / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
