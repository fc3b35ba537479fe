"""weakclip check-data: look at a VOC-layout dataset before a long run and report what would fail later.

Each problem found is one ``problem:`` line and makes the exit status 1; usage errors exit 2."""

from __future__ import annotations

import collections
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weakclip.data.classes import COCO_CLASSES, COCO_OFFICIAL91_CLASSES, VOC_CLASSES
from weakclip.data.io import IMAGE_EXTS, read_image, read_mask
from weakclip.data.labels import load_labels
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


def _examples(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", … ({len(names) - n} more)" if len(names) > n else "")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _sample(names: Sequence[str], n: int) -> list[str]:
    if n <= 0 or len(names) <= n:
        return list(names)
    return [names[i] for i in np.unique(np.linspace(0, len(names) - 1, n).round().astype(int))]


def _layout_guess(values: set[int], num_classes: int) -> str:
    hi = max(values) if values else 0
    if hi < num_classes:
        return f"fits the {num_classes} classes"
    guesses = {20: "VOC (21 classes)", 80: "COCO contiguous (81 classes)", 90: "COCO official 91 slots (category ids)"}
    return next((text for top, text in guesses.items() if hi <= top), "no known layout")


def _read_class_file(path: Path) -> tuple[str, ...]:
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


def layout_from_config(root: str | Path, cfg: dict[str, Any], config_source: str, given: dict[str, Any]) -> DataLayout:
    """The layout to check: each path in ``given`` (the command line's, relative to the current directory) replaces its
    config key; the config's ``data.*`` paths are under ``root``.  Classes: ``class_names`` file > ``classes`` (a name
    of :data:`CLASS_LISTS`) > ``root/class_names.txt`` > the model preset."""
    from weakclip.data.datasets import resolve_list
    from weakclip.model.config import get_config

    root, d = Path(root), cfg["data"]
    origin: dict[str, str] = {"config": config_source}

    def pick(key: str, from_config: Any, option: str | None = None) -> Any:
        value = given.get(option or key)
        origin[key] = "command line" if value else f"data.{key}"
        if not value:
            return from_config
        return [Path(p) for p in value] if isinstance(value, list) else Path(value)

    def under_root(key: str) -> Path | None:
        return None if d.get(key) is None else root / d[key]

    image: Path = pick("image_dir", under_root("image_dir"))
    seeds, gt = pick("seed_dir", under_root("seed_dir")), pick("gt_dir", under_root("gt_dir"))
    train = pick("train_lists", [resolve_list(root, e) or str(e) for e in d["train_lists"]], "lists")
    val = pick("val_list", (resolve_list(root, d["val_list"]) or str(d["val_list"])) if d.get("val_list") else None)
    if given.get("labels") or d.get("labels"):
        label_path = pick("labels", under_root("labels"))
    else:
        label_path = next((root / c for c in LABEL_CANDIDATES if (root / c).is_file()), None)
        origin["labels"] = "found under root"

    names_file, classes = root / "class_names.txt", given.get("classes")
    if class_names_file := given.get("class_names"):
        names, origin["classes"] = _read_class_file(Path(class_names_file)), class_names_file
    elif classes:
        names, origin["classes"] = CLASS_LISTS[classes], f"--classes {classes}"
    elif names_file.is_file():
        names, origin["classes"] = _read_class_file(names_file), str(names_file)
    else:
        m = cfg["model"]
        try:
            names = get_config(m["preset"], **(m.get("overrides") or {})).class_names
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(f"{config_source}: model: {' '.join(str(e).strip(chr(39)).split())}") from None
        origin["classes"] = f"model.preset {m['preset']}"
    image_ext = given.get("image_ext") or ".jpg"
    return DataLayout(root, image, seeds, gt, train, val, label_path, tuple(names), image_ext, origin)


def check_dataset(lay: DataLayout, sample: int = 300) -> int:
    """Print the report for ``lay``; returns the number of problems found (0 = nothing would fail)."""
    problems: list[str] = []

    def problem(text: str) -> None:
        problems.append(text)
        print(f"problem: {text}")

    K = len(lay.class_names)
    print(f"dataset {lay.root}: layout from {lay.origin['config']}; {K} classes from {lay.origin['classes']}")

    images: set[str] = set()
    if not lay.image_dir.is_dir():
        problem(f"{lay.image_dir}: image folder not found ({lay.origin['image_dir']})")
    else:
        files = [p for p in lay.image_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
        suffixes = collections.Counter(p.suffix.lower() or "(no suffix)" for p in files)
        by_suffix = {s: n for s, n in suffixes.items() if s in IMAGE_EXTS}
        odd = {s: n for s, n in suffixes.items() if s not in IMAGE_EXTS}
        if lay.image_ext.lower() in IMAGE_EXTS:
            images = {p.stem for p in files if p.suffix.lower() == lay.image_ext.lower()}
        print(f"images: {sum(by_suffix.values())} in {lay.image_dir} ({_counts(by_suffix)})")
        if odd:
            print(f"  {sum(odd.values())} file(s) there are not images ({_counts(odd)})")
        if not by_suffix:
            problem(f"{lay.image_dir}: holds no images")

    def read_list(entry: str | Path, key: str) -> list[str]:
        if isinstance(entry, str) or not entry.is_file():
            where = f"under {lay.root}" if isinstance(entry, str) else "(relative to the current directory)"
            problem(f"list {str(entry)!r} not found {where} ({lay.origin[key]})")
            return []
        names = [Path(ln.split()[0]).stem for ln in entry.read_text().splitlines() if ln.strip()]
        missing = [n for n in names if n not in images]
        print(f"list {entry.name}: {len(names)} names" + (f", {len(missing)} without an image" if missing else ""))
        if missing:
            problem(f"{entry}: {len(missing)} name(s) have no {lay.image_ext} in {lay.image_dir}: {_examples(missing)}")
        return names

    train = [n for entry in lay.train_lists for n in read_list(entry, "train_lists")]
    train = list(dict.fromkeys(train)) or sorted(images)
    val = list(dict.fromkeys(read_list(lay.val_list, "val_list"))) if lay.val_list is not None else []

    values: set[int] = set()  # class values found in the masks

    def check_masks(what: str, folder: Path | None, key: str, required: list[str], optional: list[str]) -> None:
        if folder is None:
            print(f"{what}: none configured")
            return
        if not folder.is_dir():
            problem(f"{folder}: {what} folder not found ({lay.origin[key]})")
            return
        have = {p.stem for p in folder.glob("*.png") if not p.name.startswith(".")}
        lacking = [n for n in required if n not in have]
        none = f"; {len(lacking)} of the names that need one have none" if lacking else ""
        print(f"{what}: {len(have)} PNG masks in {folder}{none}")
        if lacking:
            need = "training list" if what == "seeds" else "validation list"
            problem(f"{folder}: no {what} mask for {len(lacking)} name(s) of the {need}: {_examples(lacking)}")
        others = [n for n in optional if n not in have and n not in required]
        if others:
            print(f"  no ground truth for {len(others)} training image(s) (e.g. trainaug names): {_examples(others)}")
        for n in _sample([n for n in dict.fromkeys([*required, *optional]) if n in have], sample):
            path = folder / f"{n}.png"
            try:
                m = read_mask(path)
                vals = set(np.unique(m).tolist()) - {255}
                values.update(vals)
                if bad := sorted(v for v in vals if v >= K):
                    problem(f"{path}: class values {bad} ≥ K = {K} ({lay.origin['classes']})")
                img = read_image(lay.image_dir / f"{n}{lay.image_ext}") if n in images else None
            except ValueError as e:
                problem(str(e))
                continue
            if img is not None and img.shape[:2] != m.shape:
                problem(f"{path}: size {m.shape[1]}×{m.shape[0]} != image {img.shape[1]}×{img.shape[0]}")

    check_masks("seeds", lay.seed_dir, "seed_dir", train, [])
    check_masks("ground truth", lay.gt_dir, "gt_dir", val, train)
    if values:
        found = f"{min(values)}..{max(values)} ({len(values)} distinct)"
        print(f"class values found in masks: {found} → {_layout_guess(values, K)}")

    if lay.labels is None:
        print("labels: none found (training derives them from the seeds; generation runs without label masking)")
    else:
        try:
            labels = load_labels(lay.labels, K)
        except FileNotFoundError:
            problem(f"{lay.labels}: labels file not found ({lay.origin['labels']})")
        except (OSError, ValueError) as e:
            problem(" ".join(str(e).split()))
        else:
            lacking = [n for n in train if n not in labels]
            none = f"; {len(lacking)} training image(s) have none" if lacking else ""
            print(f"labels: {len(labels)} images in {lay.labels}{none}")
            if lacking:
                problem(
                    f"{lay.labels}: no image-level label for {len(lacking)} training image(s): {_examples(lacking)}"
                )

    print(f"{len(problems)} problem(s)" if problems else "OK: nothing here would fail a training or generation run")
    return len(problems)


# (option, help) of the plain path options
PATH_OPTIONS = (
    ("--image-dir", "images folder (default: the config's data.image_dir under ROOT)"),
    ("--image-ext", "image suffix used by list names (default: %(default)s)"),
    ("--seed-dir", "seed masks folder (default: data.seed_dir under ROOT)"),
    ("--gt-dir", "ground-truth folder (default: data.gt_dir under ROOT)"),
    ("--lists", "comma list of training list files (default: data.train_lists under ROOT)"),
    ("--val-list", "validation list file (default: data.val_list under ROOT)"),
)


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="weakclip check-data", description=__doc__.split("\n\n")[0], epilog=PATH_RULE)
    ap.add_argument("root", help="dataset root (e.g. data/VOCdevkit/VOC2012 or data/COCO14)")
    config_help = f"a shipped name ({', '.join(DETECT_ORDER)}) or a YAML/TOML file (default: detected, see below)"
    ap.add_argument("--config", help=f"training config whose data.* keys give the layout: {config_help}")
    for opt, text in PATH_OPTIONS:
        ap.add_argument(opt, help=text, default=".jpg" if opt == "--image-ext" else None)
    labels_default = f"data.labels under ROOT, else the first of {', '.join(LABEL_CANDIDATES)} there"
    ap.add_argument("--labels", help=f"image-level labels file (default: {labels_default})")
    k = ap.add_mutually_exclusive_group()
    classes_help = "class list (default: ROOT/class_names.txt, else the config's model preset)"
    k.add_argument("--classes", choices=sorted(CLASS_LISTS), help=classes_help)
    k.add_argument("--class-names", help="text file, one class name per line")
    ap.add_argument("--sample", type=int, default=300, help="images/masks decoded per folder (0 = all)")
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such dataset folder (expected a VOC-layout root, e.g. data/VOCdevkit/VOC2012)")
    lists = args.lists.split(",") if args.lists else None
    given = vars(args) | {"lists": lists}
    opts = ("--image-dir", "--seed-dir", "--gt-dir", "--val-list", "--labels", "--class-names")
    for opt, value in [(o, given[o[2:].replace("-", "_")]) for o in opts] + [("--lists", p) for p in lists or []]:
        folder = opt.endswith("-dir")
        if value and not (Path(value).is_dir() if folder else Path(value).is_file()):
            what = "no such folder" if folder else "file not found"
            raise UsageError(f"{opt} {value}: {what} (command-line paths are relative to the current directory)")
    cfg, source = training_config(args.config, root)
    lay = layout_from_config(root, cfg, source, given)
    return 1 if check_dataset(lay, args.sample) else 0


if __name__ == "__main__":
    sys.exit(main())
