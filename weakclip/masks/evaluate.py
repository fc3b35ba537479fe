"""mIoU of predicted mask folders against ground truth: the per-class table, the plot, the class lists (the
scores and their conventions: weakclip.data.metrics)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from weakclip.data.classes import COCO_CLASSES, COCO_OFFICIAL91_CLASSES, VOC_CLASSES
from weakclip.data.io import atomic_path, read_mask
from weakclip.data.metrics import ConfusionMatrix, SegMetrics
from weakclip.errors import UsageError

NAMED_CLASS_LISTS = {"voc": VOC_CLASSES, "coco91": COCO_OFFICIAL91_CLASSES, "coco81": COCO_CLASSES}  # --classes


def format_table(metrics: SegMetrics, class_names: Sequence[str]) -> str:
    """Per-class table (IoU, FP, FN in %) and the mIoU line."""
    w = max(10, *(len(n) for n in class_names))
    lines = [f"{'class':<{w}}  {'IoU':>6}  {'FP':>6}  {'FN':>6}  {'GT px':>12}"]
    for i, n in enumerate(class_names):
        pct = ["   n/a" if math.isnan(v) else f"{100 * v:6.2f}" for v in (metrics.iou[i], metrics.fp[i], metrics.fn[i])]
        lines.append(f"{n:<{w}}  {'  '.join(pct)}  {metrics.gt_pixels[i]:>12d}")
    lines.append(
        f"mIoU {100 * metrics.miou:.2f}  pixel acc {100 * metrics.pixel_acc:.2f}  unknown {100 * metrics.unknown:.2f}"
    )
    return "\n".join(lines)


def plot_iou(metrics: SegMetrics, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Bar chart of per-class IoU (PNG, matplotlib Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iou = np.nan_to_num(metrics.iou, nan=0.0) * 100
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(class_names)), 4.0))
    ax.bar(range(len(class_names)), iou, color="tab:blue")
    ax.axhline(100 * metrics.miou, color="tab:red", linestyle="--", label=f"mIoU {100 * metrics.miou:.1f}")
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=90, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def evaluate_dirs(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    num_classes: int,
    names: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> tuple[SegMetrics, int]:
    """Score ``pred_dir/<name>.png`` against ``gt_dir/<name>.png``; returns (metrics, number of images)."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "--pred"), (gt_dir, "--gt")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} {d}: not a directory")
    if names is None:
        names = sorted(p.stem for p in pred_dir.glob("*.png") if not p.name.startswith("."))
        if not names:
            raise FileNotFoundError(f"{pred_dir}: no .png predictions found")
    cm = ConfusionMatrix(num_classes, ignore_index)
    for name in names:
        pred_path, gt_path = pred_dir / f"{name}.png", gt_dir / f"{name}.png"
        for p, what in ((pred_path, "prediction"), (gt_path, "ground truth")):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: {what} for image {name!r} not found")
        pred, gt = read_mask(pred_path), read_mask(gt_path)
        if pred.shape != gt.shape:
            size, gt_size = (f"{a.shape[1]}×{a.shape[0]}" for a in (pred, gt))
            raise ValueError(f"{pred_path}: size {size} != ground truth {gt_path} size {gt_size}")
        cm.update(pred, gt, name=str(pred_path))
    return cm.compute(), len(names)


def read_names(path: str | os.PathLike, whole_line: bool = False) -> list[str]:
    """One entry per non-blank line: its first field, or the stripped ``whole_line`` (COCO class names hold spaces)."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    return [ln.strip() if whole_line else ln.split()[0] for ln in lines]


# where a mask folder records its class list: file → the section with "class_names"
_RECORDED_CLASS_NAMES = {"generate_config.json": "engine", "seeds_config.json": "settings"}


def find_class_names(
    pred_dirs: Sequence[str | os.PathLike],
    gt_dir: str | os.PathLike,
    *,
    class_names_file: str | os.PathLike | None = None,
    classes: str | None = None,
    num_classes: int | None = None,
) -> tuple[list[str], str]:
    """The class list and where it came from: an option (``class_names_file``, ``classes`` = a built-in list name,
    ``num_classes``), else the list recorded in the first prediction folder that has one, else ``class_names.txt``
    beside or above the ground truth; never a silent VOC default (UsageError)."""
    if class_names_file:
        return read_names_lines(class_names_file), str(class_names_file)
    if classes:
        return list(NAMED_CLASS_LISTS[classes]), f"--classes {classes}"
    if num_classes:
        if num_classes == len(VOC_CLASSES):
            return list(VOC_CLASSES), "--num-classes 21 (VOC)"
        return [str(i) for i in range(num_classes)], f"--num-classes {num_classes}"
    for pred in pred_dirs:
        for filename, section in _RECORDED_CLASS_NAMES.items():
            cfg = Path(pred) / filename
            if cfg.is_file():
                try:
                    return [str(n) for n in json.loads(cfg.read_text())[section]["class_names"]], str(cfg)
                except (ValueError, KeyError, TypeError):
                    pass
    gt = Path(gt_dir)
    for cand in (gt / "class_names.txt", gt.parent / "class_names.txt"):
        if cand.is_file():
            return read_names_lines(cand), str(cand)
    where = ", ".join(str(p) for p in pred_dirs)
    raise UsageError(
        f"{where}: cannot tell the class list (no generate_config.json with the model's classes, no "
        f"class_names.txt beside {gt_dir}); pass --classes voc|coco91|coco81, --class-names FILE or --num-classes K"
    )


def read_names_lines(path: str | os.PathLike) -> list[str]:
    """Class names, one per line."""
    if names := read_names(path, whole_line=True):
        return names
    raise ValueError(f"{path}: no class names")
