"""Batched multi-view sliding-window inference vs the plain reference loop; geometry; label masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from weakclip.masks.inference import (
    InferenceOptions,
    predict,
    predict_probs,
    probs_to_mask,
    reference_predict,
    reference_predict_probs,
    view_size,
    window_grid,
)
from weakclip.model.config import DEFAULT_SCALES, OFFICIAL_SCALES

K = 5


class StandInNet(nn.Module):
    """Deterministic random net with the engine contract: (B, 3, h, w) → (B, K, h/4, w/4).

    A stride-4 conv plus a per-window global term, so a window's logits depend on the whole window (misplaced or
    mis-cropped windows change the result).
    """

    def __init__(self, k: int = K, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, k, 4, stride=4)
        self.glob = nn.Linear(3, k)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.glob(x.mean(dim=(2, 3)))[:, :, None, None]


class Recorder:
    """Wraps a run function and records the window shapes it was called with."""

    def __init__(self, fn) -> None:
        self.fn, self.shapes = fn, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.fn(x)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 3] = (200, 30, 30)  # some structure so argmax is not pure noise
    return img


def test_view_size_matches_mmseg_rescale():
    # VOC-like 375×500: short side → 512 (long 683); mmcv int(x + 0.5) rounding of each side.
    assert view_size((375, 500), 1.0) == (512, 683)
    assert view_size((375, 500), 0.5) == (256, 341)
    assert view_size((375, 500), 1.75) == (896, 1195)
    # Long-side limit binds: 2048·r / 1000.
    assert view_size((100, 1000), 1.0) == (205, 2048)
    assert view_size((100, 1000), 0.5) == (102, 1024)


def test_window_grid_matches_slide_inference():
    assert window_grid(512, 683, 512, 341) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    # Sides shorter than the crop run whole.
    assert window_grid(40, 90, 64, 43) == [(0, 40, 0, 64), (0, 40, 26, 90)]
    assert window_grid(30, 50, 64, 43) == [(0, 30, 0, 50)]
    # Every pixel covered, no window larger than the crop.
    for h, w in [(100, 130), (64, 64), (65, 200)]:
        cover = np.zeros((h, w), int)
        for y1, y2, x1, x2 in window_grid(h, w, 64, 43):
            assert y2 - y1 <= 64 and x2 - x1 <= 64
            cover[y1:y2, x1:x2] += 1
        assert cover.min() >= 1


def test_options_scale_with_crop():
    o = InferenceOptions.for_crop(512)
    assert (o.stride, o.base_size, o.max_long, o.scales, o.flip) == (341, 512, 2048, DEFAULT_SCALES, False)
    o = InferenceOptions.for_crop(512, scales="official", flip=True)
    assert o.scales == OFFICIAL_SCALES and o.num_views == 12
    o = InferenceOptions.for_crop(128, scales=[1.0], flip=False)
    assert (o.stride, o.base_size, o.max_long, o.scales, o.num_views) == (85, 128, 512, (1.0,), 1)


@pytest.mark.parametrize("max_batch", [1, 7])
def test_batched_equals_reference_loop(max_batch):
    net = StandInNet()
    opts = InferenceOptions.for_crop(64, scales=OFFICIAL_SCALES, flip=True, max_batch=max_batch)
    images = [_image(h, w, i) for i, (h, w) in enumerate([(40, 90), (64, 64), (100, 130), (150, 70)])]
    fast = Recorder(net)
    batched = predict(fast, images, opts)
    ref_calls = Recorder(net)
    for img, got in zip(images, batched):
        ref = reference_predict(ref_calls, img, opts)
        assert got.probs.shape == (K, *img.shape[:2]) and got.probs.dtype == np.float32
        assert got.mask.shape == img.shape[:2] and got.mask.dtype == np.uint8
        np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(got.mask, ref.mask)
        np.testing.assert_allclose(got.probs.sum(0), 1.0, atol=1e-5)
    # Same windows were run, in fewer calls, all multiples of 16 and within the crop.
    assert sum(s[0] for s in fast.shapes) == len(ref_calls.shapes)
    assert all(b <= max_batch for b, *_ in fast.shapes)
    assert all(h % 16 == 0 and w % 16 == 0 and h <= 64 and w <= 64 for *_, h, w in fast.shapes)
    if max_batch > 1:
        assert len(fast.shapes) < len(ref_calls.shapes)


def test_per_pixel_engine_gives_per_pixel_probs():
    """A 1×1-conv engine at full resolution: padding, window merge, resize and un-flip must all be exact identities
    when the ratio-1 view is the image itself."""
    conv = nn.Conv2d(3, K, 1)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(1))
    img = _image(50, 90, 3)  # short side 50 = base size → the view is the image; windows 48 crop → padding needed
    opts = InferenceOptions(crop=48, stride=32, base_size=50, max_long=1000, scales=(1.0,), flip=True, max_batch=4)
    with torch.no_grad():
        probs = predict_probs(conv, [img], opts)[0]
        x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - torch.tensor(opts.mean).view(1, 3, 1, 1)) / (
            torch.tensor(opts.std).view(1, 3, 1, 1)
        )
        expected = conv(x).softmax(1)[0]
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def test_reference_probs_are_a_distribution():
    net = StandInNet(seed=2)
    opts = InferenceOptions.for_crop(64, scales=(0.5, 1.0), flip=False)
    p = reference_predict_probs(net, _image(33, 47, 5), opts)
    assert p.shape == (K, 33, 47)
    torch.testing.assert_close(p.sum(0), torch.ones(33, 47), atol=1e-5, rtol=0)


def test_label_masking_turns_absent_classes_unknown():
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.random((K, 30, 40)).astype(np.float32))
    free = probs_to_mask(probs)
    assert set(np.unique(free)) == set(range(K))  # every class wins somewhere, so masking has work to do
    masked = probs_to_mask(probs, labels={2})
    assert set(np.unique(masked)) <= {0, 2, 255}
    keep = np.isin(free, [0, 2])
    np.testing.assert_array_equal(masked[keep], free[keep])
    assert (masked[~keep] == 255).all()
    with pytest.raises(ValueError, match="foreground class index"):
        probs_to_mask(probs, labels={K})


def test_predict_applies_labels_per_image():
    net = StandInNet(seed=4)
    opts = InferenceOptions.for_crop(64, scales=(1.0,), flip=False)
    images = [_image(40, 60, 1), _image(50, 50, 2)]
    preds = predict(net, images, opts, labels=[{1}, None])
    assert set(np.unique(preds[0].mask)) <= {0, 1, 255}
    np.testing.assert_array_equal(preds[1].mask, preds[1].probs.argmax(0))


def test_engine_output_is_checked():
    opts = InferenceOptions.for_crop(64, scales=(1.0,), flip=False)
    with pytest.raises(ValueError, match="engine must return logits"):
        predict_probs(lambda x: x[:, 0], [_image(40, 40, 0)], opts)


def test_crf_postprocess_then_label_masking():
    pytest.importorskip("pydensecrf", reason="pydensecrf2 not installed")
    from weakclip.masks.inference import postprocess

    img = np.zeros((24, 32, 3), np.uint8)
    img[:, 16:] = 255
    img.flags.writeable = False  # as decoded by PIL (np.asarray): the CRF must cope
    rng = np.random.default_rng(0)
    probs = np.full((K, 24, 32), 0.05, np.float32)
    probs[1, :, :16] = 0.8  # left half class 1, right half class 3, with noise flipping some pixels
    probs[3, :, 16:] = 0.8
    noise = rng.random((24, 32)) < 0.1
    probs[2][noise] = 0.95
    probs /= probs.sum(0, keepdims=True)
    out = postprocess(img, probs, labels=None, crf="voc")
    assert out.mask.dtype == np.uint8 and out.mask.shape == (24, 32)
    assert (out.mask[:, :16] == 1).mean() > 0.95 and (out.mask[:, 16:] == 3).mean() > 0.95  # noise smoothed away
    masked = postprocess(img, probs, labels={1}, crf="voc")
    assert set(np.unique(masked.mask)) <= {0, 1, 255}
    np.testing.assert_array_equal(masked.mask == 255, ~np.isin(out.mask, [0, 1]))
    with pytest.raises(ValueError, match="CRF preset"):
        postprocess(img, probs, crf="cityscapes")
