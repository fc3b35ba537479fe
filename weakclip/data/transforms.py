"""Training augmentation of the official recipe (mmseg 0.x semantics), numpy + torch only (no OpenCV).

Random rescale → random crop with ``cat_max_ratio`` → horizontal flip → photometric distortion → normalise → pad.
Every random draw comes from the ``np.random.Generator`` passed in, so a sample is reproducible from its state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from weakclip.data.classes import IMAGENET_MEAN, IMAGENET_STD

IGNORE_INDEX = 255


# Resizing follows the index rules of cv2's INTER_LINEAR (images) / INTER_NEAREST (labels).
def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners False, no antialias) of an (H, W, 3) uint8 image to ``size_hw``."""
    if image.shape[:2] == tuple(size_hw):
        return image
    t = torch.tensor(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W); copies (inputs may be read-only)
    t = F.interpolate(t, size=tuple(size_hw), mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def resize_label(label: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest resize of an (H, W) label mask to ``size_hw`` (source index = floor(dst · in / out), like cv2)."""
    if label.shape[:2] == tuple(size_hw):
        return label
    t = F.interpolate(torch.tensor(label)[None, None].float(), size=tuple(size_hw), mode="nearest")  # (1, 1, H, W)
    return t[0, 0].numpy().astype(label.dtype)


def rescale_size(hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``imrescale`` size rule: fit (H, W) inside ``scale`` = (long edge, short edge) keeping the aspect ratio."""
    h, w = hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _crop_bbox(hw: tuple[int, int], crop: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    y0 = int(rng.integers(0, max(hw[0] - crop[0], 0) + 1))
    x0 = int(rng.integers(0, max(hw[1] - crop[1], 0) + 1))
    return y0, y0 + crop[0], x0, x0 + crop[1]


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop: tuple[int, int],
    cat_max_ratio: float = 0.75,
    retries: int = 10,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop``: re-draw (≤ ``retries`` times) while one class covers ≥ ``cat_max_ratio`` of the
    non-ignored crop pixels or only one class is present; the last draw is used if none qualifies."""
    y0, y1, x0, x1 = _crop_bbox(image.shape[:2], crop, rng)
    for _ in range(retries if cat_max_ratio < 1.0 else 0):
        values, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
        counts = counts[values != ignore_index]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
        y0, y1, x0, x1 = _crop_bbox(image.shape[:2], crop, rng)
    return image[y0:y1, x0:x1], label[y0:y1, x0:x1]


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → uint8 HSV with OpenCV's 8-bit ranges (H in [0, 180), S and V in [0, 255])."""
    rgb = image.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = np.where(v > 0, delta * 255.0 / np.maximum(v, 1e-6), 0.0)
    d = np.maximum(delta, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / d, np.where(v == g, 120.0 + 60.0 * (b - r) / d, 240.0 + 60.0 * (r - g) / d))
    h = np.where(delta > 0, h, 0.0) % 360.0  # h in [-60, 300]: negative hues wrap
    return np.stack([np.round(h / 2.0) % 180, np.round(s), v], -1).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (OpenCV 8-bit ranges) → (H, W, 3) uint8 RGB."""
    h = hsv[..., 0].astype(np.float32) * 2.0 / 60.0  # sector in [0, 6)
    s = hsv[..., 1].astype(np.float32) / 255.0
    v = hsv[..., 2].astype(np.float32)
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [np.choose(i, c) for c in ([v, q, p, p, t, v], [t, v, v, q, p, p], [p, p, t, v, v, q])]
    return np.clip(np.round(np.stack(rgb, -1)), 0, 255).astype(np.uint8)


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg: float multiply-add, clip to [0, 255], truncate to uint8.
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` (its default ranges) on an (H, W, 3) uint8 RGB image; each step applies with
    probability 0.5.  Order: brightness; contrast now (mode 1) or last (mode 0); saturation; hue."""
    img = image
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-32, 32))
    mode = int(rng.integers(2))
    if mode == 1 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        img = hsv_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-18, 18))) % 180
        img = hsv_to_rgb(hsv)
    if mode == 0 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(0.5, 1.5))
    return img


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → (3, H, W) float32 tensor ``(x - mean) / std`` (mean/std in 0-255 RGB)."""
    x = torch.tensor(image).permute(2, 0, 1).float()  # (3, H, W)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


@dataclass
class TrainTransform:
    """The official training augmentation with the crop size as a parameter (base scale (2048, 512) × crop/512)."""

    crop_size: int = 512  # square crop side; output tensors are (3, crop, crop) and (crop, crop)
    base_scale: tuple[int, int] | None = None  # (long, short) keep-ratio scale at ratio 1; None → (4·crop, crop)
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random rescale ratio range
    cat_max_ratio: float = 0.75  # max share of one class in a crop (re-draw otherwise)
    crop_retries: int = 10  # re-draws for cat_max_ratio
    flip_prob: float = 0.5  # horizontal flip probability
    photometric: bool = True  # apply PhotoMetricDistortion
    mean: tuple[float, ...] = IMAGENET_MEAN  # RGB mean (0-255)
    std: tuple[float, ...] = IMAGENET_STD  # RGB std (0-255)
    ignore_index: int = IGNORE_INDEX  # label value of ignored / padded pixels

    @property
    def scale(self) -> tuple[int, int]:
        return (self.base_scale[0], self.base_scale[1]) if self.base_scale else (4 * self.crop_size, self.crop_size)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, W, 3) uint8 RGB + (H, W) uint8 label → image (3, crop, crop) float32, label (crop, crop) int64."""
        crop = (self.crop_size, self.crop_size)
        # mmseg Resize(img_scale=scale, ratio_range=..., keep_ratio=True)
        ratio = rng.random() * (self.ratio_range[1] - self.ratio_range[0]) + self.ratio_range[0]
        size = rescale_size(image.shape[:2], (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        image, label = resize_image(image, size), resize_label(label, size)
        image, label = random_crop(image, label, rng, crop, self.cat_max_ratio, self.crop_retries, self.ignore_index)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        img_t = normalize(image, self.mean, self.std)
        lab_t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        ph, pw = crop[0] - img_t.shape[1], crop[1] - img_t.shape[2]  # pad bottom/right up to the crop (never < 0)
        return F.pad(img_t, (0, pw, 0, ph), value=0.0), F.pad(lab_t, (0, pw, 0, ph), value=self.ignore_index)


test_transform = normalize  # evaluation: no resizing, just normalisation
vars(test_transform)["__test__"] = False  # not a pytest test, despite its name
