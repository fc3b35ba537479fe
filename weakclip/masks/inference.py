"""Multi-scale × flip sliding-window inference over any engine (SPEC §5), with a readable reference loop beside it.

Semantics follow the official pipeline (mmseg 0.19 ``MultiScaleFlipAug`` + ``Resize(keep_ratio=True)`` +
``slide_inference`` + ``aug_test``, then ``tools/make_crf.py``); each step is described at its function.  The engine
is any callable ``run(windows (B, 3, h, w) float32 normalised) -> logits (B, K, h', w')``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from weakclip.data.classes import IMAGENET_MEAN, IMAGENET_STD
from weakclip.model.config import DEFAULT_SCALES, scales_from

EngineFn = Callable[[torch.Tensor], torch.Tensor]
Window = tuple[int, int, int, int]  # (y1, y2, x1, x2), end-exclusive, in view pixels

# Smallest token-grid side WeakCLIP runs: the pyramid adapter's stride-32 level is MaxPool2d(2) over the token grid,
# which has no output for a side of 1 token.  Window sides below MIN_TOKENS · size_divisor pixels are zero-padded.
MIN_TOKENS = 2


@dataclass(frozen=True)
class InferenceOptions:
    """How an image becomes views and windows (defaults: the official VOC/COCO geometry for a 512 crop, one view)."""

    crop: int = 512  # sliding-window size c (square)
    stride: int = 341  # sliding-window stride (official: round(2c/3))
    base_size: int = 512  # short side of the ratio-1 view (mmseg img_scale (2048, 512) → 512)
    max_long: int = 2048  # long-side limit of the ratio-1 view
    scales: tuple[float, ...] = DEFAULT_SCALES  # view ratios r (OFFICIAL_SCALES + flip = the paper's 12 views)
    flip: bool = False  # also run every view horizontally flipped
    max_batch: int = 16  # windows per engine call
    size_divisor: int = 16  # engine input H, W must be multiples of this (ViT patch); windows are floored to it
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB 0-255 normalisation mean
    std: tuple[float, float, float] = IMAGENET_STD  # RGB 0-255 normalisation std
    device: str = "cpu"  # where views, windows and accumulators live (the engine gets windows on this device)

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.stride <= 0 or self.base_size <= 0 or self.max_long <= 0:
            raise ValueError(f"crop, stride, base_size and max_long must be positive: {self}")
        if self.stride > self.crop:
            raise ValueError(f"stride {self.stride} > crop {self.crop} would leave pixels uncovered")
        if self.crop % self.size_divisor:
            raise ValueError(f"crop {self.crop} must be a multiple of size_divisor {self.size_divisor}")
        if self.crop < MIN_TOKENS * self.size_divisor:
            raise ValueError(f"crop {self.crop} is under the network's minimum {MIN_TOKENS} × {self.size_divisor}")
        object.__setattr__(self, "scales", scales_from(self.scales))
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    @classmethod
    def for_crop(cls, crop: int, **overrides: Any) -> InferenceOptions:
        """Options scaled to a model crop c: stride round(2c/3), base size c, long side ≤ 4c (c=512 → official)."""
        d: dict[str, Any] = dict(crop=crop, stride=round(crop * 2 / 3), base_size=crop, max_long=4 * crop)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)

    @classmethod
    def for_engine(cls, engine: Any, **overrides: Any) -> InferenceOptions:
        """Options from anything with ``crop_size``, ``mean``, ``std`` (an Engine, a WeakCLIPConfig), plus overrides."""
        d: dict[str, Any] = dict(mean=tuple(engine.mean), std=tuple(engine.std))
        if getattr(engine, "size_divisor", None):
            d["size_divisor"] = int(engine.size_divisor)
        d.update(overrides)
        crop = d.pop("crop", None) or int(engine.crop_size)
        return cls.for_crop(crop, **d)

    @property
    def num_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Prediction:
    probs: np.ndarray  # (K, H, W) float32: softmax averaged over the views (before label masking / CRF)
    mask: np.ndarray  # (H, W) uint8 class indices; 255 = unknown (argmax is a class absent from the labels)


def view_size(image_hw: tuple[int, int], ratio: float, base_size: int = 512, max_long: int = 2048) -> tuple[int, int]:
    """(h, w) of the view at ``ratio``: mmseg keep-ratio rescale of the original into (int(max_long·r), int(base·r))."""
    h, w = image_hw
    long_edge, short_edge = int(max_long * ratio), int(base_size * ratio)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(int(h * s + 0.5), 1), max(int(w * s + 0.5), 1)


def window_grid(h: int, w: int, crop: int, stride: int) -> list[Window]:
    """Sliding windows of mmseg ``slide_inference`` over an h×w view: list of (y1, y2, x1, x2), row-major."""
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    return [
        (max(y2 - crop, 0), y2, max(x2 - crop, 0), x2)
        for y2 in [min(i * stride + crop, h) for i in range(h_grids)]
        for x2 in [min(j * stride + crop, w) for j in range(w_grids)]
    ]


def engine_size(h: int, w: int, divisor: int) -> tuple[int, int]:
    """Engine input size of an h×w window: each side floored to a multiple of ``divisor`` (the pixels a patch
    convolution with kernel = stride = divisor and no padding reads), or, for a side whose floor is under
    ``MIN_TOKENS · divisor``, that minimum (the side is then zero-padded, see :func:`window_input`)."""
    if h <= 0 or w <= 0:
        raise ValueError(f"empty window {h}×{w}")
    least = MIN_TOKENS * divisor
    return max(h // divisor * divisor, least), max(w // divisor * divisor, least)


def window_input(view: torch.Tensor, win: Window, size: tuple[int, int]) -> torch.Tensor:
    """The engine input (3, *size) of window ``win`` of a normalised view (3, h, w), ``size`` = :func:`engine_size`:
    the window's top-left ``size`` pixels (the floor crop), except that a side longer than the window is the whole
    side zero-padded at the end (zero after normalisation = the mean colour, as training pads crops)."""
    y1, y2, x1, x2 = win
    eh, ew = size
    x = view[:, y1 : y1 + min(eh, y2 - y1), x1 : x1 + min(ew, x2 - x1)]
    if tuple(x.shape[-2:]) != (eh, ew):
        x = F.pad(x, (0, ew - x.shape[-1], 0, eh - x.shape[-2]))
    return x


def _logit_size(win_hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The full window side (official), or the padded engine side where the window was padded."""
    return max(win_hw[0], size[0]), max(win_hw[1], size[1])


def _as_uint8_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {tuple(a.shape)}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (decoded 0-255), got dtype {a.dtype}")
    return a


def make_view(image: np.ndarray, size: tuple[int, int], flip: bool, opts: InferenceOptions) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → normalised (3, h, w) float32 view on ``opts.device``: ``cv2.resize`` INTER_LINEAR on
    uint8 (mmcv ``imresize``), horizontal flip, then mmcv's normalisation ``(x − mean) · (1/std)``."""
    if tuple(image.shape[:2]) != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if flip:
        image = image[:, ::-1]
    t = torch.from_numpy(np.ascontiguousarray(image)).to(opts.device).permute(2, 0, 1).float()
    mean = torch.tensor(opts.mean, dtype=torch.float32, device=t.device).view(3, 1, 1)
    stdinv = torch.tensor(1.0 / np.asarray(opts.std, np.float64), dtype=torch.float32, device=t.device).view(3, 1, 1)
    return (t - mean) * stdinv


def _resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Engine logits (B, K, h', w') → float32 (B, K, *size): bilinear, align_corners False (mmseg ``resize``)."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


def _finish_view(logit_sum: torch.Tensor, count: torch.Tensor, image_hw: tuple[int, int], flip: bool) -> torch.Tensor:
    """Summed window logits (K, h, w) / count → resize to H×W → softmax over K → un-flip: (K, H, W)."""
    probs = _resize_logits((logit_sum / count)[None], image_hw).softmax(dim=1)[0]
    return probs.flip(-1) if flip else probs


def _check_logits(logits: torch.Tensor, batch: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"engine must return logits (B={batch}, K, h', w'), got {shape}")


def reference_predict_probs(run: EngineFn, image: np.ndarray, opts: InferenceOptions) -> torch.Tensor:
    """The per-view, per-window loop of mmseg ``aug_test``/``slide_inference``: (K, H, W) float32 probabilities."""
    img = _as_uint8_image(image)
    H, W = img.shape[:2]
    total: torch.Tensor | None = None
    for ratio in opts.scales:
        vh, vw = view_size((H, W), ratio, opts.base_size, opts.max_long)
        for flip in (False, True) if opts.flip else (False,):
            x = make_view(img, (vh, vw), flip, opts)  # (3, h, w)
            preds: torch.Tensor | None = None
            count = torch.zeros(1, vh, vw, device=x.device)
            for win in window_grid(vh, vw, opts.crop, opts.stride):
                y1, y2, x1, x2 = win
                size = engine_size(y2 - y1, x2 - x1, opts.size_divisor)
                logits = run(window_input(x, win, size)[None])  # (1, K, h', w')
                _check_logits(logits, 1)
                logits = _resize_logits(logits.to(x.device), _logit_size((y2 - y1, x2 - x1), size))
                logits = logits[0, :, : y2 - y1, : x2 - x1]  # (K, y2-y1, x2-x1)
                if preds is None:
                    preds = x.new_zeros(logits.shape[0], vh, vw)
                preds[:, y1:y2, x1:x2] += logits
                count[:, y1:y2, x1:x2] += 1
            assert preds is not None  # every view has at least one window
            probs = _finish_view(preds, count, (H, W), flip)
            total = probs if total is None else total + probs
    assert total is not None  # at least one view
    return (total / opts.num_views).float()


@dataclass
class _View:
    image: int  # index of the image in the call
    flip: bool
    x: torch.Tensor | None  # (3, h, w) normalised view; dropped once all its windows ran
    count: torch.Tensor  # (1, h, w) windows covering each pixel
    pending: int  # windows not yet run
    logit_sum: torch.Tensor | None = None  # (K, h, w), allocated on the first result

    def input(self) -> torch.Tensor:
        assert self.x is not None, "the view's windows all ran"
        return self.x


def predict_probs(run: EngineFn, images: Sequence[np.ndarray], opts: InferenceOptions) -> list[torch.Tensor]:
    """Probabilities (K, H, W) float32 per image, as the reference loop (up to float summation order), with all
    windows grouped by :func:`engine_size` and sent ``opts.max_batch`` at a time.  Every view's K×h×w accumulator
    lives until its last window ran, so callers pass a handful of images at a time."""
    views: list[_View] = []
    groups: dict[tuple[int, int], list[tuple[int, Window]]] = {}  # engine (h, w) → [(view index, window)]
    shapes: list[tuple[int, int]] = []
    for i, image in enumerate(images):
        img = _as_uint8_image(image)
        H, W = img.shape[:2]
        shapes.append((H, W))
        for ratio in opts.scales:
            vh, vw = view_size((H, W), ratio, opts.base_size, opts.max_long)
            grid = window_grid(vh, vw, opts.crop, opts.stride)
            count = torch.zeros(1, vh, vw, device=opts.device)
            for y1, y2, x1, x2 in grid:
                count[:, y1:y2, x1:x2] += 1
            for flip in (False, True) if opts.flip else (False,):
                views.append(_View(i, flip, make_view(img, (vh, vw), flip, opts), count, len(grid)))
                for win in grid:
                    key = engine_size(win[1] - win[0], win[3] - win[2], opts.size_divisor)
                    groups.setdefault(key, []).append((len(views) - 1, win))

    totals: list[torch.Tensor | None] = [None] * len(images)
    for key, jobs in groups.items():
        for start in range(0, len(jobs), opts.max_batch):
            chunk = jobs[start : start + opts.max_batch]
            batch = torch.stack([window_input(views[v].input(), win, key) for v, win in chunk])
            raw = run(batch)  # (B, K, h', w')
            _check_logits(raw, len(chunk))
            raw = raw.to(opts.device)
            # Each window's logits are resized to its full (unfloored) size, or to the padded size and cropped back;
            # windows of one batch share the engine size but not always the window size, so resize once per
            # distinct target size.
            targets = [_logit_size((y2 - y1, x2 - x1), key) for _, (y1, y2, x1, x2) in chunk]
            resized: dict[int, torch.Tensor] = {}
            for size in dict.fromkeys(targets):
                idx = [j for j, s in enumerate(targets) if s == size]
                resized.update(zip(idx, _resize_logits(raw[idx], size)))
            for j, (v, (y1, y2, x1, x2)) in enumerate(chunk):
                view = views[v]
                if view.logit_sum is None:
                    view.logit_sum = view.input().new_zeros(raw.shape[1], *view.input().shape[-2:])
                view.logit_sum[:, y1:y2, x1:x2] += resized[j][:, : y2 - y1, : x2 - x1]
                view.pending -= 1
                if view.pending == 0:
                    probs = _finish_view(view.logit_sum, view.count, shapes[view.image], view.flip)
                    t = totals[view.image]
                    totals[view.image] = probs if t is None else t + probs
                    view.x = view.logit_sum = None  # free
    done = [t for t in totals if t is not None]
    assert len(done) == len(totals)  # every image has at least one view
    return [(t / opts.num_views).float() for t in done]


def probs_to_mask(probs: np.ndarray | torch.Tensor, labels: Collection[int] | None = None) -> np.ndarray:
    """(K, H, W) probabilities → (H, W) uint8 argmax; with ``labels`` (present foreground classes, 1-based), pixels
    whose argmax is a foreground class not in ``labels`` become 255 (the paper's "unknown")."""
    p = torch.as_tensor(probs)
    return mask_unlabelled(p.argmax(dim=0).cpu().numpy(), labels, p.shape[0])


def mask_unlabelled(mask: np.ndarray, labels: Collection[int] | None, num_classes: int) -> np.ndarray:
    """(H, W) class indices → uint8 with every foreground class absent from ``labels`` set to 255 (None: no-op)."""
    K = num_classes
    if K > 255:
        raise ValueError(f"{K} classes do not fit a uint8 mask with 255 reserved")
    mask = np.asarray(mask)
    if labels is None:
        return mask.astype(np.uint8)
    for c in labels:
        if not 1 <= int(c) < K:
            raise ValueError(f"image-level label {c} is not a foreground class index in 1..{K - 1}")
    allowed = np.isin(np.arange(K), [0, *map(int, labels)])
    return np.where(allowed[mask], mask, 255).astype(np.uint8)


def apply_crf(image: np.ndarray, probs: np.ndarray, preset: str) -> np.ndarray:
    """Dense CRF at full resolution (preset ``voc`` or ``coco`` of SPEC §5) as the official ``make_crf``: unary over
    the classes that win the argmax somewhere, their probabilities clipped at 1e-5 and not renormalised; returns
    (H, W) int64 class indices.  Lazy import: pydensecrf is optional."""
    from weakclip.model.crf import CRF_PRESETS, crf_postprocess

    if preset not in ("voc", "coco"):
        raise ValueError(f"unknown CRF preset {preset!r}; choose voc, coco or none")
    image = np.require(image, dtype=np.uint8, requirements=["C", "W"])  # pydensecrf needs a writable buffer
    labels, _ = crf_postprocess(image, probs, CRF_PRESETS[preset], min_prob=1e-5, renormalise=False)
    return labels


def predict(
    run: EngineFn,
    images: Sequence[np.ndarray],
    opts: InferenceOptions,
    labels: Sequence[Collection[int] | None] | None = None,
    crf: str | None = None,
) -> list[Prediction]:
    """Batched inference + masks for several images.  ``labels[i]`` (or None) masks image i; ``crf`` in voc|coco."""
    probs = predict_probs(run, images, opts)
    return [postprocess(images[i], p, None if labels is None else labels[i], crf) for i, p in enumerate(probs)]


def reference_predict(
    run: EngineFn,
    image: np.ndarray,
    opts: InferenceOptions,
    labels: Collection[int] | None = None,
    crf: str | None = None,
) -> Prediction:
    """The reference loop for one image (test oracle of :func:`predict`)."""
    return postprocess(image, reference_predict_probs(run, image, opts), labels, crf)


def postprocess(
    image: np.ndarray, probs: torch.Tensor | np.ndarray, labels: Collection[int] | None = None, crf: str | None = None
) -> Prediction:
    """(K, H, W) probabilities → :class:`Prediction`: argmax (or the CRF's labels), then image-level label masking
    (after the CRF, so "unknown" keeps its meaning: the pixel's final class is not among the image's labels)."""
    p = torch.as_tensor(probs).float().cpu().numpy()
    K = p.shape[0]
    classes = p.argmax(0) if crf in (None, "none") else apply_crf(image, p, crf)
    return Prediction(probs=p, mask=mask_unlabelled(classes, labels, K))
