"""Segmentation scores of label maps: a dataset-level confusion matrix and mIoU.

Conventions (SPEC §5):
* GT pixels equal to ``ignore_index`` (255) are ignored.
* A *prediction* of 255 ("unknown", what label masking produces) on a valid GT pixel counts as wrong: it is a false
  negative of the GT class and a false positive of no class.  Pseudo masks cannot improve their score by abstaining.
* IoU_c = TP / (TP + FP + FN); mIoU is the nanmean over classes that appear (in GT or prediction); a class that
  appears in neither is NaN and left out.
* Per-class error split (our pick among the WSSS conventions): FP_c = FP / (TP + FP + FN) and
  FN_c = FN / (TP + FP + FN), so IoU_c + FP_c + FN_c = 1 and each term is bounded (the other convention, FP/TP, blows
  up for classes with few true positives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class SegMetrics:
    """Scores computed from a confusion matrix (arrays have one entry per class, NaN where the class is absent)."""

    iou: np.ndarray  # (K,) TP / (TP + FP + FN)
    fp: np.ndarray  # (K,) FP / (TP + FP + FN)
    fn: np.ndarray  # (K,) FN / (TP + FP + FN)
    gt_pixels: np.ndarray  # (K,) valid GT pixels per class
    miou: float  # nanmean of iou
    pixel_acc: float  # correct / valid GT pixels
    unknown: float  # fraction of valid GT pixels predicted 255

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.iou))]
        per_class = [
            {"index": i, "name": n, **{k: _number(getattr(self, k)[i]) for k in ("iou", "fp", "fn")}}
            | {"gt_pixels": int(self.gt_pixels[i])}
            for i, n in enumerate(names)
        ]
        return {k: _number(getattr(self, k)) for k in ("miou", "pixel_acc", "unknown")} | {"per_class": per_class}


def _number(x: float) -> float | None:
    """JSON value of a score: None for NaN."""
    return None if math.isnan(x) else float(x)


class ConfusionMatrix:
    """Accumulates a (K, K+1) matrix: rows = GT class, columns = predicted class, last column = predicted 255.

    Used by this CLI and by training validation (``update`` accepts numpy arrays or torch tensors of any equal shape).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if not 1 <= num_classes < ignore_index:
            raise ValueError(f"num_classes must be in 1..{ignore_index - 1}, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, pred: Any, gt: Any, name: str = "") -> None:
        """Add one prediction/GT pair (or a batch of them).  Values ≥ K other than 255 are an error."""
        self.matrix += confusion(pred, gt, self.num_classes, self.ignore_index, name)

    def compute(self) -> SegMetrics:
        return metrics_from_matrix(self.matrix)


def confusion(pred: Any, gt: Any, num_classes: int, ignore_index: int = 255, name: str = "") -> np.ndarray:
    """The (K, K+1) int64 confusion counts of one prediction/GT pair (numpy arrays or torch tensors of equal shape):
    rows = GT class, columns = predicted class, last column = predicted ``ignore_index``; GT ``ignore_index`` pixels
    are left out.  Values ≥ K other than ``ignore_index`` raise ValueError (prefixed with ``name``)."""
    pred, gt = (np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in (pred, gt))
    where = f"{name}: " if name else ""
    if pred.shape != gt.shape:
        raise ValueError(f"{where}prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    K, ign = num_classes, ignore_index
    valid = gt != ign
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= K):
        raise ValueError(f"{where}ground truth has class {int(g.max())} >= num_classes {K} (and != {ign})")
    bad = (p != ign) & ((p < 0) | (p >= K))
    if bad.any():
        raise ValueError(f"{where}prediction has class {int(p[bad].max())} >= num_classes {K} (and != {ign})")
    p = np.where(p == ign, K, p)  # 255 → the "unknown" column
    return np.bincount(g * (K + 1) + p, minlength=K * (K + 1)).reshape(K, K + 1)


def metrics_from_matrix(matrix: np.ndarray) -> SegMetrics:
    """:class:`SegMetrics` of a (K, K+1) confusion matrix (one image's from :func:`confusion`, or a dataset's)."""
    m = matrix.astype(np.float64)
    K = m.shape[0]
    tp = np.diag(m[:, :K])
    fp = m[:, :K].sum(axis=0) - tp
    fn = m.sum(axis=1) - tp  # includes GT pixels predicted 255
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, fp_r, fn_r = tp / union, fp / union, fn / union
    total = m.sum()
    with np.errstate(invalid="ignore"):
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return SegMetrics(
        iou=iou,
        fp=fp_r,
        fn=fn_r,
        gt_pixels=np.asarray(matrix).sum(axis=1),
        miou=miou,
        pixel_acc=float(tp.sum() / total) if total else float("nan"),
        unknown=float(m[:, K].sum() / total) if total else float("nan"),
    )
