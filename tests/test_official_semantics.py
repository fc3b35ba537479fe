"""Pseudo masks equal the official pipeline (SPEC §5), checked against the plain restatement in
``tests/official_semantics.py`` at the official geometry (crop 512, stride 341, box 2048×512, 12 views).

The network is a small WeakCLIP at crop 512 (random weights, fixed seed: the tiny preset at half width for the
public path, the export fixture's tiny model for ``weakclip-generate``, to keep the suite fast).  The oracle
runs it the official way: every window at its own, unpadded size (the patch convolution floors it), the text tower
recomputed per window, the image decoded and resized by OpenCV.  The public paths (``predict_probs`` with the torch
engine, and ``weakclip-generate`` with the torch and the ONNX Runtime engines) must give argmax agreement ≥ 99.99 %
and max |Δprob| ≤ 1e-5: both sides compute in fp32 and differ only in summation order and in the engine's fp32
arithmetic (|Δlogit| ≲ 1e-6 for ONNX Runtime, see test_export), far below 1e-5 after the softmax.

``predict_probs`` is compared on a portrait image by default (``weakclip-generate`` on a landscape one) and on all
five sizes under ``-m slow`` (`make test-all`).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from official_semantics import official_crf, official_probs

import weakclip
from weakclip.data.io import read_image, read_mask
from weakclip.masks.inference import InferenceOptions, predict_probs
from weakclip.model.config import OFFICIAL_SCALES

# VOC-like sizes (H, W), plus one smaller than the crop on both sides.
SIZES = [(375, 500), (500, 333), (281, 500), (500, 500), (200, 150)]
# The public path's default check (each image costs the oracle's 12 full views; the landscape case is
# GENERATE_SIZES); all of SIZES under `-m slow`.
QUICK_SIZES = [(500, 333)]
GENERATE_SIZES = [(281, 500)]  # 281 = 17·16 + 9: every view has windows whose sides are not multiples of 16
MAX_DPROB = 1e-5
MIN_AGREEMENT = 0.9999


def _write_image(path: Path, h: int, w: int, seed: int) -> Path:
    """A JPEG with structure (blocks + gradients + noise): argmax regions with real boundaries."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 97) * 2], -1)
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 20), rng.integers(0, w - 20)
        img[y0 : y0 + rng.integers(20, h // 2), x0 : x0 + rng.integers(20, w // 2)] = rng.integers(0, 256, 3)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _oracle(model, paths) -> dict[str, np.ndarray]:
    cfg = model.config
    return {p.stem: official_probs(lambda x: model(x).logits, p, cfg.num_classes, cfg.mean, cfg.std) for p in paths}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("official_semantics")
    (root / "images").mkdir()
    return root, [_write_image(root / "images" / f"img{h}x{w}.jpg", h, w, i) for i, (h, w) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    kw = dict(vision_width=32, vision_heads=1, neck_channels=16, head_channels=16, coattn_width=16, coattn_heads=1)
    return weakclip.build_model("tiny", crop_size=512, **kw).eval()


def _compare(probs: np.ndarray, ref: np.ndarray, what: str) -> tuple[float, float]:
    assert probs.shape == ref.shape, f"{what}: shape {probs.shape} vs {ref.shape}"
    dprob = float(np.abs(probs - ref).max())
    agree = float((probs.argmax(0) == ref.argmax(0)).mean())
    print(f"{what}: max |Δprob| {dprob:.2e}, argmax agreement {100 * agree:.4f} %")
    return dprob, agree


def test_geometry_is_the_official_one():
    opts = InferenceOptions.for_crop(512, scales=OFFICIAL_SCALES, flip=True)
    assert (opts.crop, opts.stride, opts.base_size, opts.max_long, opts.num_views) == (512, 341, 512, 2048, 12)


@pytest.mark.parametrize(
    "sizes",
    [pytest.param(QUICK_SIZES, id="portrait"), pytest.param(SIZES, id="all-sizes", marks=pytest.mark.slow)],
)
def test_public_path_equals_official(images, small_model, sizes):
    from weakclip.engines.torch_engine import TorchEngine

    _, paths = images
    paths = [p for p in paths if p.stem in {f"img{h}x{w}" for h, w in sizes}]
    assert len(paths) == len(sizes)
    model = small_model
    oracle = _oracle(model, paths)
    engine = TorchEngine(model)
    opts = InferenceOptions.for_engine(engine, scales=OFFICIAL_SCALES, flip=True, max_batch=8)
    assert (opts.crop, opts.stride, opts.base_size, opts.max_long) == (512, 341, 512, 2048)
    images = [read_image(p) for p in paths]
    for p, probs in zip(paths, predict_probs(engine, images, opts)):
        dprob, agree = _compare(probs.numpy(), oracle[p.stem], f"predict_probs {p.stem}")
        assert dprob <= MAX_DPROB and agree >= MIN_AGREEMENT


@pytest.fixture(scope="module")
def _generate_oracle(images, tiny_onnx):
    _, ckpt = tiny_onnx
    root, _ = images
    model = weakclip.load_checkpoint(ckpt).eval()
    return _oracle(model, [root / "images" / f"img{h}x{w}.jpg" for h, w in GENERATE_SIZES])


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_generate_equals_official(images, tiny_onnx, tmp_path, engine, _generate_oracle):
    from weakclip.cli.generate import main

    onnx_dir, ckpt = tiny_onnx
    root, _ = images
    oracle = _generate_oracle
    names = [f"img{h}x{w}" for h, w in GENERATE_SIZES]
    (tmp_path / "list.txt").write_text("".join(n + "\n" for n in names))
    model = ckpt if engine == "torch" else onnx_dir / "weakclip.onnx"
    out = tmp_path / "masks"
    rc = main(
        [
            "--engine",
            engine,
            "--model",
            str(model),
            "--images",
            str(tmp_path / "list.txt"),
            "--image-root",
            str(root / "images"),
            "--out",
            str(out),
            "--scales",
            "official",
            "--flip",
            "--save-probs",
            "--probs-dtype",
            "float32",
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    for n in names:
        probs = np.load(out / "probs" / f"{n}.npy")
        dprob, agree = _compare(probs, oracle[n], f"generate --engine {engine} {n}")
        assert dprob <= MAX_DPROB and agree >= MIN_AGREEMENT
        mask = read_mask(out / f"{n}.png")
        assert (mask == oracle[n].argmax(0)).mean() >= MIN_AGREEMENT
    cfg = json.loads((out / "generate_config.json").read_text())
    assert cfg["inference"]["scales"] == list(OFFICIAL_SCALES) and cfg["inference"]["flip"] is True


@pytest.mark.parametrize("preset", ["voc", "coco"])
def test_crf_equals_official_make_crf(images, _generate_oracle, preset):
    pytest.importorskip("pydensecrf", reason="the dense CRF needs pydensecrf2")
    from weakclip.masks.inference import postprocess
    from weakclip.model.crf import CRF_PRESETS

    root, _ = images
    (name, probs), P = next(iter(_generate_oracle.items())), CRF_PRESETS[preset]
    image = read_image(root / "images" / f"{name}.jpg")
    assert len(np.unique(probs.argmax(0))) > 2  # several keys: the unary is really a subset of the classes
    ours = postprocess(image, probs, labels=None, crf=preset).mask
    ref = official_crf(image, probs, P.gauss_sxy, P.gauss_compat, P.bi_sxy, P.bi_srgb, P.bi_compat)
    assert (ours == ref).all()


def test_decode_follows_opencv(tmp_path):
    """16-bit PNGs keep their content (OpenCV's 16 → 8 bit: the high byte), grey becomes 3 channels, EXIF rotates."""
    a16 = (np.random.default_rng(0).random((20, 30, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), a16)
    img = read_image(tmp_path / "deep.png")
    assert img.dtype == np.uint8 and (img == (a16 >> 8)[..., ::-1]).all()
    grey = np.arange(600, dtype=np.uint8).reshape(20, 30)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    assert (read_image(tmp_path / "grey.png") == grey[..., None]).all()
    from PIL import Image

    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert read_image(tmp_path / "rot.jpg").shape == (20, 10, 3)
