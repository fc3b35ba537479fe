"""weakclip check-data: look at a VOC-layout dataset before a long run and report what would fail later.

    weakclip check-data data/VOCdevkit/VOC2012 --seed-dir MCTformer_pseudo_masks --labels cls_labels.npy
    weakclip check-data data/coco2014/voc_format --classes coco91 --image-dir images --gt-dir class_labels

It reports, one line each: images (by suffix, plus files that are not images), every list file under
``ImageSets/Segmentation`` (or the ``--lists`` given) with the names that have no image, seeds and ground truth
(counts, list names without one), image-level labels (count, names without one, class indices out of range), the
class range found in the masks (and which layout it looks like: VOC 21, COCO 81 contiguous or COCO 91 slots), and a
decode check of a sample of images and masks (corrupt files, mask of another size than its image).

Exit status: 0 when nothing would fail, 1 when a problem was found (each is a ``problem:`` line), 2 for usage
errors (no such root).  It reads masks and decodes images for a sample only (``--sample``, default 300; ``--sample
0`` = all), so it takes seconds on VOC.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .classes import COCO_CLASSES, COCO_OFFICIAL91_CLASSES, VOC_CLASSES
from .errors import UsageError, cli
from .io import IMAGE_EXTS, read_image, read_mask

SEED_DIR_CANDIDATES = ("SeedMasks", "MCTformer_pseudo_masks", "pseudo_masks", "seeds")
GT_DIR_CANDIDATES = ("SegmentationClassAug", "SegmentationClass", "class_labels")
LABEL_CANDIDATES = ("cls_labels.npy", "cls_labels.json", "cls_labels.txt")
CLASS_LISTS = {"voc": VOC_CLASSES, "coco91": COCO_OFFICIAL91_CLASSES, "coco81": COCO_CLASSES}


class Report:
    def __init__(self) -> None:
        self.problems = 0

    def info(self, text: str) -> None:
        print(f"  {text}")

    def problem(self, text: str) -> None:
        self.problems += 1
        print(f"problem: {text}")


def _examples(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", … ({len(names) - n} more)" if len(names) > n else "")


def _first_dir(root: Path, given: str | None, candidates: Sequence[str]) -> Path | None:
    if given:
        return root / given
    return next((root / c for c in candidates if (root / c).is_dir()), None)


def _sample(names: Sequence[str], n: int) -> list[str]:
    if n <= 0 or len(names) <= n:
        return list(names)
    idx = np.unique(np.linspace(0, len(names) - 1, n).round().astype(int))
    return [names[i] for i in idx]


def _layout_guess(values: set[int], num_classes: int) -> str:
    hi = max(values) if values else 0
    if hi < num_classes:
        return f"fits the {num_classes} classes"
    if hi <= 20:
        return "VOC (21 classes)"
    if hi <= 80:
        return "COCO contiguous (81 classes)"
    if hi <= 90:
        return "COCO official 91 slots (category ids)"
    return "no known layout"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="weakclip check-data", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="dataset root in VOC layout (e.g. VOCdevkit/VOC2012)")
    ap.add_argument("--image-dir", default="JPEGImages", help="images folder under root (default: %(default)s)")
    ap.add_argument("--image-ext", default=".jpg", help="image suffix used by list names (default: %(default)s)")
    ap.add_argument(
        "--seed-dir", help=f"seed masks under root (default: the first of {', '.join(SEED_DIR_CANDIDATES)})"
    )
    ap.add_argument("--gt-dir", help=f"ground truth under root (default: the first of {', '.join(GT_DIR_CANDIDATES)})")
    ap.add_argument("--lists", help="comma list of list files (names under ImageSets/Segmentation or paths; "
                    "default: every .txt there)")  # fmt: skip
    ap.add_argument("--labels", help=f"image-level labels (default: the first of {', '.join(LABEL_CANDIDATES)})")
    k = ap.add_mutually_exclusive_group()
    k.add_argument("--classes", choices=sorted(CLASS_LISTS), help="class list (default: class_names.txt or voc)")
    k.add_argument("--class-names", help="text file, one class name per line")
    ap.add_argument("--sample", type=int, default=300, help="images/masks decoded per folder (0 = all)")
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such dataset folder (expected a VOC-layout root with {args.image_dir}/)")
    rep = Report()

    # classes
    if args.class_names:
        classes = tuple(ln.strip() for ln in Path(args.class_names).read_text().splitlines() if ln.strip())
        source = args.class_names
    elif args.classes:
        classes, source = CLASS_LISTS[args.classes], f"--classes {args.classes}"
    elif (root / "class_names.txt").is_file():
        classes = tuple(ln.strip() for ln in (root / "class_names.txt").read_text().splitlines() if ln.strip())
        source = str(root / "class_names.txt")
    else:
        classes, source = VOC_CLASSES, "default (VOC)"
    K = len(classes)
    print(f"dataset {root}: {K} classes from {source}")

    # images
    image_dir = root / args.image_dir
    if not image_dir.is_dir():
        rep.problem(f"{image_dir}: image folder not found")
        images: set[str] = set()
    else:
        by_suffix: collections.Counter = collections.Counter()
        odd: collections.Counter = collections.Counter()
        images = set()
        for p in image_dir.iterdir():
            if not p.is_file() or p.name.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_EXTS:
                by_suffix[p.suffix.lower()] += 1
                if p.suffix.lower() == args.image_ext.lower():
                    images.add(p.stem)
            else:
                odd[p.suffix.lower() or "(no suffix)"] += 1
        print(
            f"images: {sum(by_suffix.values())} in {image_dir} ({', '.join(f'{n} {s}' for s, n in by_suffix.items())})"
        )
        if odd:
            rep.info(
                f"{sum(odd.values())} file(s) there are not images ({', '.join(f'{n} {s}' for s, n in odd.items())})"
            )
        if not by_suffix:
            rep.problem(f"{image_dir}: holds no images")

    # lists
    list_dir = root / "ImageSets" / "Segmentation"
    if args.lists:
        list_files = []
        for entry in args.lists.split(","):
            cands = [list_dir / entry, list_dir / f"{entry}.txt", Path(entry)]
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                rep.problem(f"list {entry!r} not found (tried {', '.join(map(str, cands))})")
            else:
                list_files.append(found)
    else:
        list_files = sorted(list_dir.glob("*.txt")) if list_dir.is_dir() else []
        if not list_files:
            rep.problem(f"{list_dir}: no list files (train.txt, train_aug.txt, val.txt …)")
    listed: list[str] = []
    for lf in list_files:
        names = [Path(ln.split()[0]).stem for ln in lf.read_text().splitlines() if ln.strip()]
        missing = [n for n in names if n not in images]
        print(f"list {lf.name}: {len(names)} names" + (f", {len(missing)} without an image" if missing else ""))
        if missing:
            rep.problem(f"{lf}: {len(missing)} name(s) have no {args.image_ext} in {image_dir}: {_examples(missing)}")
        listed.extend(n for n in names if n not in listed)
    wanted = listed or sorted(images)

    # masks: seeds and ground truth
    values: set[int] = set()
    for what, d in (("seeds", _first_dir(root, args.seed_dir, SEED_DIR_CANDIDATES)),
                    ("ground truth", _first_dir(root, args.gt_dir, GT_DIR_CANDIDATES))):  # fmt: skip
        if d is None:
            print(
                f"{what}: none found (looked for {', '.join(SEED_DIR_CANDIDATES if what == 'seeds' else GT_DIR_CANDIDATES)})"
            )
            continue
        if not d.is_dir():
            rep.problem(f"{d}: {what} folder not found")
            continue
        have = {p.stem for p in d.glob("*.png") if not p.name.startswith(".")}
        lacking = [n for n in wanted if n not in have]
        print(
            f"{what}: {len(have)} PNG masks in {d}" + (f"; {len(lacking)} listed image(s) have none" if lacking else "")
        )
        if lacking and what == "seeds":
            rep.problem(f"{d}: no seed for {len(lacking)} listed image(s) (training skips them): {_examples(lacking)}")
        elif lacking:
            rep.info(
                f"no ground truth for {len(lacking)} listed image(s) (e.g. a train_aug list): {_examples(lacking)}"
            )
        for n in _sample([n for n in wanted if n in have], args.sample):
            try:
                m = read_mask(d / f"{n}.png")
            except ValueError as e:
                rep.problem(str(e))
                continue
            vals = set(np.unique(m).tolist()) - {255}
            values |= vals
            bad = sorted(v for v in vals if v >= K)
            if bad:
                rep.problem(f"{d / (n + '.png')}: class values {bad} ≥ K = {K} ({source})")
            if n in images:
                try:
                    img = read_image(image_dir / f"{n}{args.image_ext}")
                except ValueError as e:
                    rep.problem(str(e))
                    continue
                if img.shape[:2] != m.shape:
                    rep.problem(
                        f"{d / (n + '.png')}: size {m.shape[1]}×{m.shape[0]} != image {img.shape[1]}×{img.shape[0]}"
                    )
    if values:
        print(
            f"class values found in masks: {min(values)}..{max(values)} ({len(values)} distinct) → {_layout_guess(values, K)}"
        )

    # image-level labels
    label_path = (
        Path(args.labels) if args.labels else next((root / c for c in LABEL_CANDIDATES if (root / c).is_file()), None)
    )
    if label_path is None:
        print("labels: none found (training derives them from the seeds; generation runs without label masking)")
    else:
        from .data.labels import load_labels

        try:
            labels = load_labels(label_path, K)
        except (OSError, ValueError) as e:
            rep.problem(" ".join(str(e).split()))
        else:
            lacking = [n for n in wanted if n not in labels]
            print(
                f"labels: {len(labels)} images in {label_path}"
                + (f"; {len(lacking)} listed image(s) have none" if lacking else "")
            )
            if lacking:
                rep.problem(
                    f"{label_path}: no image-level label for {len(lacking)} listed image(s): {_examples(lacking)}"
                )

    print(f"{rep.problems} problem(s)" if rep.problems else "OK: nothing here would fail a training or generation run")
    return 1 if rep.problems else 0


if __name__ == "__main__":
    sys.exit(main())
