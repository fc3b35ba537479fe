"""Windows below the network's minimum token grid are zero-padded (the one intentional difference in the windows).

The official network cannot run a window whose floor-to-16 crop has fewer than 2 tokens on a side (the adapter's
stride-32 level max-pools 2×2 tokens: "Output size is too small"), which happens on views of very thin images.
Such a side is taken whole, zero-padded to the minimum, and its logits cropped back; every other window is left as
the official floor crop, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import weakclip
from weakclip.masks import inference
from weakclip.masks.inference import MIN_TOKENS, InferenceOptions, make_view, predict_probs, reference_predict_probs

SCALES = (0.5, 0.75, 1.0)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return weakclip.build_model("tiny").eval()  # crop 128, patch 16


@pytest.fixture(scope="module")
def run(model):
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x).logits

    return forward


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 97 * 2], -1).astype(np.float64)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


class _Recorder:
    def __init__(self, run) -> None:
        self.run, self.inputs = run, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.run(x)


def test_min_tokens_is_the_models_minimum(run, model):
    p = model.config.patch_size
    run(torch.zeros(1, 3, MIN_TOKENS * p, MIN_TOKENS * p))
    for h, w in ((MIN_TOKENS - 1) * p, MIN_TOKENS * p), (MIN_TOKENS * p, (MIN_TOKENS - 1) * p):
        with pytest.raises(RuntimeError, match="Output size is too small"):
            run(torch.zeros(1, 3, h, w))


@pytest.mark.parametrize("hw", [(24, 300), (10, 10), (3, 400)])
def test_thin_and_tiny_images_get_a_full_mask(run, model, hw):
    """24×300 at ratios 0.5/0.75 and 3×400 at every ratio have views thinner than 2 tokens; 10×10 does not."""
    opts = InferenceOptions.for_engine(model.config, scales=SCALES, flip=True, max_batch=4)
    img = _image(*hw)
    rec = _Recorder(run)
    (probs,) = predict_probs(rec, [img], opts)
    K = model.config.num_classes
    assert probs.shape == (K, *hw) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(0), torch.ones(hw), rtol=0, atol=1e-5)
    pred = inference.postprocess(img, probs)
    assert pred.mask.shape == hw and pred.mask.max() < K
    least = MIN_TOKENS * opts.size_divisor
    assert all(x.shape[-1] % 16 == 0 and min(x.shape[-2:]) >= least for x in rec.inputs)
    views = [inference.view_size(hw, r, opts.base_size, opts.max_long) for r in SCALES]
    padded = any(min(v) // 16 < MIN_TOKENS for v in views)
    assert padded == (hw != (10, 10))
    # the reference loop pads the same way
    torch.testing.assert_close(reference_predict_probs(run, img, opts), probs, rtol=0, atol=1e-6)


def test_padded_window_is_the_window_zero_padded_and_cropped_back(run, model):
    """One thin view by hand: rows zero-padded (normalised 0 = the mean colour) to 2 tokens, the width floored as
    officially, logits resized to the padded height × full width, cropped to the window, resized to the image."""
    img = _image(24, 300, seed=1)
    opts = InferenceOptions.for_engine(model.config, scales=(0.24,), flip=False)
    vh, vw = inference.view_size((24, 300), 0.24, opts.base_size, opts.max_long)
    fw = vw // 16 * 16
    assert vh < 32 <= fw < vw <= opts.crop  # one window: thinner than 2 tokens; width not a multiple of 16
    x = make_view(img, (vh, vw), False, opts)
    win = F.pad(x[:, :, :fw], (0, 0, 0, 32 - vh))
    assert torch.equal(win[:, vh:], torch.zeros_like(win[:, vh:]))
    logits = F.interpolate(run(win[None]), size=(32, vw), mode="bilinear", align_corners=False)[:, :, :vh]
    expected = F.interpolate(logits, size=(24, 300), mode="bilinear", align_corners=False).softmax(1)[0]
    rec = _Recorder(run)
    (probs,) = predict_probs(rec, [img], opts)
    assert len(rec.inputs) == 1 and torch.equal(rec.inputs[0][0], win)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)


def _unpadded_engine_size(h: int, w: int, divisor: int) -> tuple[int, int]:
    return h // divisor * divisor, w // divisor * divisor


def _floor_crop(view: torch.Tensor, win, size) -> torch.Tensor:
    y1, _, x1, _ = win
    return view[:, y1 : y1 + size[0], x1 : x1 + size[1]]


@pytest.mark.parametrize("hw", [(90, 130), (70, 200)])
def test_normal_images_are_bit_identical_to_the_unpadded_path(run, model, hw, monkeypatch):
    """Images whose windows all reach the minimum: the same probabilities, bit for bit, as the plain floor crop."""
    opts = InferenceOptions.for_engine(model.config, scales=SCALES, flip=True, max_batch=4)
    img = _image(*hw, seed=2)
    rec = _Recorder(run)
    (probs,) = predict_probs(rec, [img], opts)
    ref = reference_predict_probs(run, img, opts)
    monkeypatch.setattr(inference, "engine_size", _unpadded_engine_size)
    monkeypatch.setattr(inference, "window_input", _floor_crop)
    rec_plain = _Recorder(run)
    (plain,) = predict_probs(rec_plain, [img], opts)
    assert torch.equal(probs, plain)
    assert torch.equal(ref, reference_predict_probs(run, img, opts))
    assert len(rec.inputs) == len(rec_plain.inputs)
    assert all(torch.equal(a, b) for a, b in zip(rec.inputs, rec_plain.inputs, strict=True))


def test_generate_with_the_torch_engine_writes_full_masks(tmp_path, model):
    from weakclip.cli.generate import main
    from weakclip.data.io import read_mask

    ckpt = tmp_path / "tiny.safetensors"
    weakclip.save_checkpoint(model, ckpt)
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"thin": (24, 300), "tiny": (10, 10)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(images / f"{name}.png"), _image(h, w)[..., ::-1])
    out = tmp_path / "out"
    rc = main(
        [
            "--images",
            str(images),
            "--out",
            str(out),
            "--engine",
            "torch",
            "--model",
            str(ckpt),
            "--scales",
            ",".join(map(str, SCALES)),
            "--flip",
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    for name, hw in sizes.items():
        mask = read_mask(out / f"{name}.png")
        assert mask.shape == hw and mask.max() < model.config.num_classes
    assert not (out / "failures.txt").exists()


def test_onnxruntime_engine_runs_the_padded_windows(tiny_onnx):
    """The exported graph takes the padded 2-token windows and agrees with the torch engine on them."""
    pytest.importorskip("onnxruntime")
    from weakclip.engines.base import get_engine

    onnx_dir, ckpt = tiny_onnx  # crop 512: a 10×1000 image has 10-20-pixel-high views at these ratios
    img = _image(10, 1000, seed=3)
    with get_engine("onnxruntime", onnx_dir / "weakclip.onnx") as ort, get_engine("torch", ckpt) as ref:
        opts = InferenceOptions.for_engine(ort, scales=SCALES, flip=False)
        rec = _Recorder(ort)
        (probs,) = predict_probs(rec, [img], opts)
        (expected,) = predict_probs(ref, [img], opts)
    assert any(x.shape[-2] == MIN_TOKENS * 16 for x in rec.inputs)
    assert probs.shape == (len(ort.class_names), 10, 1000)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-5)


def test_readme_names_the_padding_as_an_intentional_difference():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Pseudo-mask generation", 1)[1].split("\n## ", 1)[0]
    assert "Intentional differences" in section and "zero-padded" in section
