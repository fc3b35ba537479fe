"""Dense CRF (Krähenbühl & Koltun) over pydensecrf, imported lazily: boundary-loss and post-processing CRFs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    gauss_sxy: float  # spatial std of the Gaussian (smoothness) kernel, pixels
    gauss_compat: float  # weight of the Gaussian kernel (Potts compatibility)
    bi_sxy: float  # spatial std of the bilateral (appearance) kernel, pixels
    bi_srgb: float  # colour std of the bilateral kernel, 0-255 units
    bi_compat: float  # weight of the bilateral kernel
    iterations: int  # mean-field iterations

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


# Boundary loss (SPEC §2): on the stride-8 probabilities and the downscaled image.
BOUNDARY_LOSS_CRF = CRFParams(gauss_sxy=3, gauss_compat=3, bi_sxy=80, bi_srgb=13, bi_compat=10, iterations=10)
# Pseudo-mask post-processing at full resolution (SPEC §5).
VOC_POSTPROC_CRF = CRFParams(gauss_sxy=3, gauss_compat=3, bi_sxy=83, bi_srgb=5, bi_compat=3, iterations=10)
# CLIP-ES eval_cam_with_crf.py DenseCRF(iter_max=10, pos_xy_std=1, pos_w=3, bi_xy_std=67, bi_rgb_std=3, bi_w=4): the
# CRF of the CLIP-ES seeds (weakclip.masks.seeds) and the COCO post-processing preset.
CLIP_ES_CRF = CRFParams(gauss_sxy=1, gauss_compat=3, bi_sxy=67, bi_srgb=3, bi_compat=4, iterations=10)
CRF_PRESETS: dict[str, CRFParams] = {"boundary": BOUNDARY_LOSS_CRF, "voc": VOC_POSTPROC_CRF, "coco": CLIP_ES_CRF}


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    gauss_sxy: float,
    gauss_compat: float,
    bi_sxy: float,
    bi_srgb: float,
    bi_compat: float,
    iterations: int,
    min_prob: float = 1e-4,
) -> np.ndarray:
    """Mean-field dense CRF, unary -log(clip(P, min_prob, 1)): image (H, W, 3) uint8, probs (K, H, W) → Q (K, H, W)."""
    try:  # imported here so that the rest of the package works without pydensecrf
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise ImportError(
            "the dense CRF needs pydensecrf; install the maintained fork with `pip install pydensecrf2` "
            f"(import error: {e})"
        ) from e
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf: image must be (H, W, 3) uint8, got shape {image.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"dense_crf: probs must be (K, H, W) matching the image {image.shape[:2]}, got {probs.shape}")
    K, H, W = probs.shape
    unary = -np.log(np.clip(probs, min_prob, 1.0)).reshape(K, -1)  # same as pydensecrf.utils.unary_from_softmax
    d = dcrf.DenseCRF2D(W, H, K)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=np.require(image, np.uint8, ["C", "W"]), compat=bi_compat)
    q = d.inference(int(iterations))
    return np.asarray(q, dtype=np.float32).reshape(K, H, W)


def crf_postprocess(
    image: np.ndarray,
    probs: np.ndarray,
    params: CRFParams = VOC_POSTPROC_CRF,
    classes: np.ndarray | list[int] | None = None,
    min_prob: float = 1e-4,
    renormalise: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """CRF over ``classes`` only (default: those winning the argmax somewhere), mapped back to K-class indexing.

    image: (H, W, 3) uint8 RGB, probs: (K, H, W) → (labels (H, W) int64, refined probs (K, H, W) float32, zero for
    dropped classes).  The official ``make_crf`` is ``min_prob=1e-5, renormalise=False``.
    """
    probs = np.asarray(probs, dtype=np.float32)
    K = probs.shape[0]
    keep = np.unique(probs.argmax(0)) if classes is None else np.unique(np.asarray(classes, dtype=np.int64))
    if keep.size == 0 or keep.min() < 0 or keep.max() >= K:
        raise ValueError(f"crf_postprocess: classes must be a non-empty subset of 0..{K - 1}, got {keep.tolist()}")
    out = np.zeros_like(probs)
    if keep.size == 1:
        out[keep[0]] = 1.0
        return np.full(probs.shape[1:], keep[0], dtype=np.int64), out
    sub = probs[keep]
    if renormalise:
        sub = sub / np.maximum(sub.sum(0, keepdims=True), 1e-12)
    out[keep] = q = dense_crf(image, sub, min_prob=min_prob, **params.as_kwargs())
    return keep[q.argmax(0)].astype(np.int64), out
