"""weakclip check-data: look at a VOC-layout dataset before a long run and report what would fail later.

    weakclip check-data data/VOCdevkit/VOC2012 --labels data/VOCdevkit/VOC2012/cls_labels.npy
    weakclip check-data data/COCO14 --config coco_vit_b16

The layout (image, seed and ground-truth folders, training and validation lists, labels, classes) is the one a
training config reads: ``--config NAME|FILE`` (a shipped name such as ``voc_vit_b16`` / ``coco_vit_b16`` or a YAML /
TOML file), by default the shipped config whose ``data.image_dir`` and ``data.seed_dir`` exist under ROOT
(:data:`DETECT_ORDER`).  Its ``data.*`` paths are relative to ROOT, as in training.  Options given on the command
line replace single keys, and like every path on a weakclip command line they are relative to the current directory
(or absolute).

It reports, one line each: images (by suffix, plus files that are not images), the training and validation lists
with the names that have no image, seeds (every training name needs one) and ground truth (every validation name
needs one), image-level labels (count, training names without one, class indices out of range), the class range found
in the masks (and which layout it looks like: VOC 21, COCO 81 contiguous or COCO 91 slots), and a decode check of a
sample of images and masks (corrupt files, mask of another size than its image).

Exit status: 0 when nothing would fail, 1 when a problem was found (each is a ``problem:`` line), 2 for usage
errors (no such root, an unknown config).  It reads masks and decodes images for a sample only (``--sample``,
default 300; ``--sample 0`` = all), so it takes seconds on VOC.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weakclip.data.classes import COCO_CLASSES, COCO_OFFICIAL91_CLASSES, VOC_CLASSES
from weakclip.data.io import IMAGE_EXTS, read_image, read_mask
from weakclip.errors import ArgumentParser, UsageError, cli

# Shipped training configs tried, in order, when --config is not given (the first whose folders exist wins).
DETECT_ORDER = ("voc_vit_b16", "coco_vit_b16", "synthetic_tiny")
FALLBACK_CONFIG = "voc_vit_b16"
LABEL_CANDIDATES = ("cls_labels.npy", "cls_labels.json", "cls_labels.txt")
CLASS_LISTS = {"voc": VOC_CLASSES, "coco91": COCO_OFFICIAL91_CLASSES, "coco81": COCO_CLASSES}

PATH_RULE = (
    "Paths: every path given on this command line (ROOT, --config FILE, --image-dir, --seed-dir, --gt-dir, --lists, "
    "--val-list, --labels, --class-names) is relative to the current directory, or absolute, as for every weakclip "
    "command. What is not given comes from the training config's data.* keys, which are relative to ROOT (as in "
    f"weakclip train). Default config: the first shipped one of {', '.join(DETECT_ORDER)} whose data.image_dir and "
    f"data.seed_dir exist under ROOT, else {FALLBACK_CONFIG}."
)


@dataclass
class DataLayout:
    """What to check, every path resolved; ``origin`` says where each part came from (for the report)."""

    root: Path
    image_dir: Path
    seed_dir: Path | None
    gt_dir: Path | None
    train_lists: list[str | Path]  # Path: a resolved file; str: a config entry that resolves to no file
    val_list: str | Path | None
    labels: Path | None
    class_names: tuple[str, ...]
    image_ext: str = ".jpg"
    origin: dict[str, str] = field(default_factory=dict)


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


def _read_class_file(path: Path, what: str) -> tuple[str, ...]:
    if not path.is_file():
        raise UsageError(f"{path}: {what} not found")
    return tuple(ln.strip() for ln in path.read_text().splitlines() if ln.strip())


def training_config(name_or_file: str | None, root: Path) -> tuple[dict[str, Any], str]:
    """(the training config, how it was chosen): ``name_or_file`` as ``weakclip train --config`` reads it, or the
    first of :data:`DETECT_ORDER` whose ``data.image_dir`` and ``data.seed_dir`` exist under ``root``."""
    from weakclip.training.train import load_config  # the one config reader (defaults, types, shipped names)

    if name_or_file:
        return load_config(name_or_file, []), f"--config {name_or_file}"
    for name in DETECT_ORDER:
        d = load_config(name, [])["data"]
        if (root / d["image_dir"]).is_dir() and (root / d["seed_dir"]).is_dir():
            return load_config(name, []), f"config {name} (its {d['image_dir']}/ and {d['seed_dir']}/ are under root)"
    return load_config(FALLBACK_CONFIG, []), f"config {FALLBACK_CONFIG} (no shipped config's folders found)"


def layout_from_config(
    root: str | Path,
    cfg: dict[str, Any],
    config_source: str,
    *,
    image_dir: str | None = None,
    seed_dir: str | None = None,
    gt_dir: str | None = None,
    lists: Sequence[str] | None = None,
    val_list: str | None = None,
    labels: str | None = None,
    classes: str | None = None,
    class_names_file: str | None = None,
    image_ext: str = ".jpg",
) -> DataLayout:
    """The layout to check: each given path (relative to the current directory) replaces its config key; the
    config's ``data.*`` paths are taken under ``root``.  Classes: ``class_names_file`` > ``classes`` (a name of
    :data:`CLASS_LISTS`) > ``root/class_names.txt`` > the config's model preset."""
    from weakclip.data.datasets import resolve_list
    from weakclip.model.config import get_config

    root = Path(root)
    d = cfg["data"]
    origin: dict[str, str] = {"config": config_source}

    def pick(given: str | None, key: str) -> Path | None:
        if given:
            origin[key] = "command line"
            return Path(given)
        origin[key] = f"data.{key}"
        return None if d.get(key) is None else root / d[key]

    image = pick(image_dir, "image_dir")
    assert image is not None
    seeds, gt = pick(seed_dir, "seed_dir"), pick(gt_dir, "gt_dir")
    if lists:
        origin["train_lists"] = "command line"
        train: list[str | Path] = [Path(p) for p in lists]
    else:
        origin["train_lists"] = "data.train_lists"
        train = [resolve_list(root, e) or str(e) for e in d["train_lists"]]
    if val_list:
        origin["val_list"] = "command line"
        val: str | Path | None = Path(val_list)
    else:
        origin["val_list"] = "data.val_list"
        val = None if not d.get("val_list") else (resolve_list(root, d["val_list"]) or str(d["val_list"]))
    if labels:
        label_path: Path | None = Path(labels)
        origin["labels"] = "command line"
    elif d.get("labels"):
        label_path, origin["labels"] = root / d["labels"], "data.labels"
    else:
        label_path = next((root / c for c in LABEL_CANDIDATES if (root / c).is_file()), None)
        origin["labels"] = "found under root"

    if class_names_file:
        names, origin["classes"] = _read_class_file(Path(class_names_file), "--class-names file"), class_names_file
    elif classes:
        names, origin["classes"] = CLASS_LISTS[classes], f"--classes {classes}"
    elif (root / "class_names.txt").is_file():
        names, origin["classes"] = (
            _read_class_file(root / "class_names.txt", "class list"),
            str(root / "class_names.txt"),
        )
    else:
        m = cfg["model"]
        try:
            names = get_config(m["preset"], **(m.get("overrides") or {})).class_names
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(f"{config_source}: model: {' '.join(str(e).strip(chr(39)).split())}") from None
        origin["classes"] = f"model.preset {m['preset']}"
    return DataLayout(root, image, seeds, gt, train, val, label_path, tuple(names), image_ext, origin)


def _list_names(path: Path) -> list[str]:
    return [Path(ln.split()[0]).stem for ln in path.read_text().splitlines() if ln.strip()]


def _check_masks(
    rep: Report,
    what: str,
    folder: Path | None,
    required: Sequence[str],
    optional: Sequence[str],
    lay: DataLayout,
    images: set[str],
    sample: int,
    values: set[int],
) -> None:
    """Count the masks in ``folder``, report names of ``required`` without one, decode a sample of both lists."""
    if folder is None:
        print(f"{what}: none configured")
        return
    if not folder.is_dir():
        rep.problem(f"{folder}: {what} folder not found ({lay.origin[('seed_dir' if what == 'seeds' else 'gt_dir')]})")
        return
    have = {p.stem for p in folder.glob("*.png") if not p.name.startswith(".")}
    lacking = [n for n in required if n not in have]
    print(f"{what}: {len(have)} PNG masks in {folder}" + (f"; {len(lacking)} of the names that need one have none"
                                                          if lacking else ""))  # fmt: skip
    if lacking:
        need = "training list" if what == "seeds" else "validation list"
        rep.problem(f"{folder}: no {what} mask for {len(lacking)} name(s) of the {need}: {_examples(lacking)}")
    others = [n for n in optional if n not in have and n not in required]
    if others and what != "seeds":
        rep.info(f"no ground truth for {len(others)} training image(s) (e.g. trainaug names): {_examples(others)}")
    names = list(dict.fromkeys([*required, *optional]))
    K = len(lay.class_names)
    for n in _sample([n for n in names if n in have], sample):
        try:
            m = read_mask(folder / f"{n}.png")
        except ValueError as e:
            rep.problem(str(e))
            continue
        vals = set(np.unique(m).tolist()) - {255}
        values |= vals
        bad = sorted(v for v in vals if v >= K)
        if bad:
            rep.problem(f"{folder / (n + '.png')}: class values {bad} ≥ K = {K} ({lay.origin['classes']})")
        if n in images:
            try:
                img = read_image(lay.image_dir / f"{n}{lay.image_ext}")
            except ValueError as e:
                rep.problem(str(e))
                continue
            if img.shape[:2] != m.shape:
                rep.problem(f"{folder / (n + '.png')}: size {m.shape[1]}×{m.shape[0]} != image "
                            f"{img.shape[1]}×{img.shape[0]}")  # fmt: skip


def check_dataset(lay: DataLayout, sample: int = 300) -> int:
    """Print the report for ``lay``; returns the number of problems found (0 = nothing would fail)."""
    rep = Report()
    K = len(lay.class_names)
    print(f"dataset {lay.root}: layout from {lay.origin['config']}; {K} classes from {lay.origin['classes']}")

    # images
    images: set[str] = set()
    if not lay.image_dir.is_dir():
        rep.problem(f"{lay.image_dir}: image folder not found ({lay.origin['image_dir']})")
    else:
        by_suffix: collections.Counter = collections.Counter()
        odd: collections.Counter = collections.Counter()
        for p in lay.image_dir.iterdir():
            if not p.is_file() or p.name.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_EXTS:
                by_suffix[p.suffix.lower()] += 1
                if p.suffix.lower() == lay.image_ext.lower():
                    images.add(p.stem)
            else:
                odd[p.suffix.lower() or "(no suffix)"] += 1
        shown = ", ".join(f"{n} {s}" for s, n in by_suffix.items())
        print(f"images: {sum(by_suffix.values())} in {lay.image_dir} ({shown})")
        if odd:
            rep.info(
                f"{sum(odd.values())} file(s) there are not images ({', '.join(f'{n} {s}' for s, n in odd.items())})"
            )
        if not by_suffix:
            rep.problem(f"{lay.image_dir}: holds no images")

    # lists
    def read_list(entry: str | Path, key: str) -> list[str]:
        if isinstance(entry, str) or not entry.is_file():
            where = f"under {lay.root}" if isinstance(entry, str) else "(relative to the current directory)"
            rep.problem(f"list {str(entry)!r} not found {where} ({lay.origin[key]})")
            return []
        names = _list_names(entry)
        missing = [n for n in names if n not in images]
        print(f"list {entry.name}: {len(names)} names" + (f", {len(missing)} without an image" if missing else ""))
        if missing:
            rep.problem(f"{entry}: {len(missing)} name(s) have no {lay.image_ext} in {lay.image_dir}: "
                        f"{_examples(missing)}")  # fmt: skip
        return names

    train: list[str] = []
    for entry in lay.train_lists:
        train.extend(read_list(entry, "train_lists"))
    train = list(dict.fromkeys(train)) or sorted(images)
    val = list(dict.fromkeys(read_list(lay.val_list, "val_list"))) if lay.val_list is not None else []

    # masks: seeds and ground truth
    values: set[int] = set()
    _check_masks(rep, "seeds", lay.seed_dir, train, [], lay, images, sample, values)
    _check_masks(rep, "ground truth", lay.gt_dir, val, train, lay, images, sample, values)
    if values:
        print(f"class values found in masks: {min(values)}..{max(values)} ({len(values)} distinct) → "
              f"{_layout_guess(values, K)}")  # fmt: skip

    # image-level labels
    if lay.labels is None:
        print("labels: none found (training derives them from the seeds; generation runs without label masking)")
    else:
        from weakclip.data.labels import load_labels

        try:
            labels = load_labels(lay.labels, K)
        except FileNotFoundError:
            rep.problem(f"{lay.labels}: labels file not found ({lay.origin['labels']})")
        except (OSError, ValueError) as e:
            rep.problem(" ".join(str(e).split()))
        else:
            lacking = [n for n in train if n not in labels]
            print(f"labels: {len(labels)} images in {lay.labels}"
                  + (f"; {len(lacking)} training image(s) have none" if lacking else ""))  # fmt: skip
            if lacking:
                rep.problem(f"{lay.labels}: no image-level label for {len(lacking)} training image(s): "
                            f"{_examples(lacking)}")  # fmt: skip

    print(f"{rep.problems} problem(s)" if rep.problems else "OK: nothing here would fail a training or generation run")
    return rep.problems


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="weakclip check-data",
        description=__doc__.split("\n\n")[0],
        epilog=PATH_RULE,
    )
    ap.add_argument("root", help="dataset root (e.g. data/VOCdevkit/VOC2012 or data/COCO14)")
    ap.add_argument("--config", help="training config whose data.* keys give the layout: a shipped name "
                    f"({', '.join(DETECT_ORDER)}) or a YAML/TOML file (default: detected, see below)")  # fmt: skip
    ap.add_argument("--image-dir", help="images folder (default: the config's data.image_dir under ROOT)")
    ap.add_argument("--image-ext", default=".jpg", help="image suffix used by list names (default: %(default)s)")
    ap.add_argument("--seed-dir", help="seed masks folder (default: data.seed_dir under ROOT)")
    ap.add_argument("--gt-dir", help="ground-truth folder (default: data.gt_dir under ROOT)")
    ap.add_argument("--lists", help="comma list of training list files (default: data.train_lists under ROOT)")
    ap.add_argument("--val-list", help="validation list file (default: data.val_list under ROOT)")
    ap.add_argument("--labels", help="image-level labels file (default: data.labels under ROOT, else the first of "
                    f"{', '.join(LABEL_CANDIDATES)} there)")  # fmt: skip
    k = ap.add_mutually_exclusive_group()
    k.add_argument("--classes", choices=sorted(CLASS_LISTS), help="class list (default: ROOT/class_names.txt, else "
                   "the config's model preset)")  # fmt: skip
    k.add_argument("--class-names", help="text file, one class name per line")
    ap.add_argument("--sample", type=int, default=300, help="images/masks decoded per folder (0 = all)")
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such dataset folder (expected a VOC-layout root, e.g. data/VOCdevkit/VOC2012)")
    given = {"--image-dir": args.image_dir, "--seed-dir": args.seed_dir, "--gt-dir": args.gt_dir}
    for opt, value in given.items():
        if value and not Path(value).is_dir():
            raise UsageError(
                f"{opt} {value}: no such folder (command-line paths are relative to the current directory)"
            )
    files = {"--val-list": args.val_list, "--labels": args.labels, "--class-names": args.class_names}
    files.update({f"--lists {p}": p for p in (args.lists.split(",") if args.lists else [])})
    for opt, value in files.items():
        if value and not Path(value).is_file():
            raise UsageError(f"{opt.split()[0]} {value}: file not found (command-line paths are relative to the "
                             "current directory)")  # fmt: skip
    cfg, source = training_config(args.config, root)
    lay = layout_from_config(
        root,
        cfg,
        source,
        image_dir=args.image_dir,
        seed_dir=args.seed_dir,
        gt_dir=args.gt_dir,
        lists=args.lists.split(",") if args.lists else None,
        val_list=args.val_list,
        labels=args.labels,
        classes=args.classes,
        class_names_file=args.class_names,
        image_ext=args.image_ext,
    )
    return 1 if check_dataset(lay, args.sample) else 0


if __name__ == "__main__":
    sys.exit(main())
