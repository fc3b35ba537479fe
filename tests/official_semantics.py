"""A plain restatement of the official test-time pipeline, the oracle of the pseudo-mask tests (SPEC §5).

Written from the official code paths, independently of :mod:`weakclip.masks.inference`, one step per line:

* mmcv 1.4 ``LoadImageFromFile``: ``cv2.imdecode(bytes, IMREAD_COLOR)`` (BGR, EXIF orientation applied);
* ``MultiScaleFlipAug(img_scale=(2048, 512), img_ratios, flip)``: scale ``(int(2048·r), int(512·r))``, for each
  scale unflipped then flipped;
* ``Resize(keep_ratio=True)`` → ``mmcv.imrescale`` → ``rescale_size`` (factor ``min(long/max(h, w),
  short/min(h, w))``, size ``int(x·f + 0.5)``) → ``cv2.resize(INTER_LINEAR)`` on uint8;
* ``RandomFlip`` → ``np.flip(img, axis=1)``; ``Normalize(to_rgb=True)`` → ``imnormalize_``: float32 copy, BGR→RGB,
  ``cv2.subtract(img, mean)``, ``cv2.multiply(img, 1/std)``;
* WeakCLIP ``slide_inference`` (crop, stride; windows at their own size, never padded) with ``encode_decode`` =
  the network on the window (its text tower recomputed every call), logits resized to the window, ``F.pad``-summed,
  divided by the count matrix, resized to the original size; ``inference``: softmax, un-flip; ``aug_test``: mean.
* ``tools/make_crf.py``: keys = ``np.unique(argmax)``, ``unary_from_softmax(prob[keys])`` (clip 1e-5), Gaussian +
  bilateral, 10 iterations, ``keys[argmax Q]``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def mmcv_rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    max_long_edge, max_short_edge = max(scale), min(scale)
    scale_factor = min(max_long_edge / max(h, w), max_short_edge / min(h, w))
    return int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)


def mmcv_imnormalize(img: np.ndarray, mean, std) -> np.ndarray:
    img = img.copy().astype(np.float32)
    mean = np.float64(np.asarray(mean).reshape(1, -1))
    stdinv = 1 / np.float64(np.asarray(std).reshape(1, -1))
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
    cv2.subtract(img, mean, img)
    cv2.multiply(img, stdinv, img)
    return img


def slide_inference(network, img: torch.Tensor, crop: int, stride: int, num_classes: int) -> torch.Tensor:
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = img.new_zeros((1, num_classes, h_img, w_img))
    count_mat = img.new_zeros((1, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * stride
            x1 = w_idx * stride
            y2 = min(y1 + crop, h_img)
            x2 = min(x1 + crop, w_img)
            y1 = max(y2 - crop, 0)
            x1 = max(x2 - crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            out = network(crop_img)
            out = F.interpolate(out, size=crop_img.shape[2:], mode="bilinear", align_corners=False)
            preds += F.pad(out, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


@torch.no_grad()
def official_probs(
    network,
    path,
    num_classes: int,
    mean,
    std,
    ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    flip: bool = True,
    crop: int = 512,
    stride: int = 341,
    img_scale: tuple[int, int] = (2048, 512),
) -> np.ndarray:
    """(K, H, W) float32 averaged probabilities of ``tools/test.py --aug-test`` for the image file ``path``."""
    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    seg_logit = None
    n = 0
    for r in ratios:
        scale = (int(img_scale[0] * r), int(img_scale[1] * r))
        new_w, new_h = mmcv_rescale_size(w, h, scale)
        resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        for flipped in (False, True) if flip else (False,):
            view = np.flip(resized, axis=1) if flipped else resized
            x = mmcv_imnormalize(view, mean, std)
            t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
            logit = slide_inference(network, t, crop, stride, num_classes)
            logit = F.interpolate(logit, size=(h, w), mode="bilinear", align_corners=False)
            output = F.softmax(logit, dim=1)
            if flipped:
                output = output.flip(dims=(3,))
            seg_logit = output if seg_logit is None else seg_logit + output
            n += 1
    return (seg_logit / n)[0].numpy()


def official_crf(image_rgb: np.ndarray, probs: np.ndarray, sxy_g, compat_g, sxy_b, srgb, compat_b, t=10) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    keys = np.unique(np.argmax(probs, axis=0))
    prob = probs[keys]
    h, w = image_rgb.shape[:2]
    d = dcrf.DenseCRF2D(w, h, prob.shape[0])
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(prob)))
    d.addPairwiseGaussian(sxy=sxy_g, compat=compat_g)
    d.addPairwiseBilateral(sxy=sxy_b, srgb=srgb, rgbim=np.ascontiguousarray(np.copy(image_rgb)), compat=compat_b)
    q = np.array(d.inference(t)).reshape((prob.shape[0], h, w))
    return keys[np.argmax(q, axis=0)].astype(np.uint8)
