"""int8 end-to-end graph for ONNX Runtime CPU (``--int8``): Conv/ConvTranspose quantised statically (QDQ, MinMax
calibration), the ViT linears dynamically; activation × activation matmuls, the co-attention and the I/O stay fp32."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def vit_linear_nodes(model: Any) -> list[str]:
    """MatMul/Gemm nodes with a constant weight that feed the CLIP visual projection (the ViT linears)."""
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    stack = [n for n in model.graph.node if "image_encoder.visual.proj" in n.input]
    if not stack:
        raise RuntimeError("no node consumes image_encoder.visual.proj: cannot locate the ViT in the graph")
    seen: set[str] = set()
    while stack:
        n = stack.pop()
        if n.name not in seen:
            seen.add(n.name)
            stack.extend(producer[i] for i in n.input if i in producer)
    nodes = model.graph.node
    return [n.name for n in nodes if n.name in seen and n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]


def _save_with_metadata(src: Path, model: Path, dst: Path, precision: str) -> None:
    import onnx

    from weakclip.export.core import read_metadata, save_model, set_metadata

    m = onnx.load(str(model))
    set_metadata(m, {**read_metadata(src), "precision": precision})
    save_model(m, dst)


def _hidden(dst: Path, tag: str) -> Path:  # an intermediate file beside dst, removed by the caller
    return dst.with_name(f".{dst.stem}.{tag}.tmp.onnx")


def quantize_vit_linears(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8 quantisation of the ViT linears of ``src`` → ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = vit_linear_nodes(onnx.load(str(src), load_external_data=False))
    t0 = time.perf_counter()
    opts = dict(
        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes, extra_options={"MatMulConstBOnly": True}
    )
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, **opts)
    _save_with_metadata(src, dst, dst, "int8-dynamic-vit-linears")
    seconds = round(time.perf_counter() - t0, 1)
    return {"quantized_nodes": len(nodes), "seconds": seconds, "mb": dst.stat().st_size / 2**20}


def quantize_convs_static(src: Path, dst: Path, calibration: Sequence[np.ndarray]) -> dict[str, Any]:
    """QDQ int8 for every Conv/ConvTranspose of ``src`` → ``dst``, calibrated on normalised (1, 3, H, W) windows."""
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("static int8 quantisation needs at least one calibration window")

    class Reader(q.CalibrationDataReader):
        items = iter([{"image": x} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    t0 = time.perf_counter()
    pre = _hidden(dst, "pre")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    try:
        types = dict(activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, per_channel=True)
        method = dict(quant_format=q.QuantFormat.QDQ, calibrate_method=q.CalibrationMethod.MinMax)
        q.quantize_static(
            str(pre), str(dst), Reader(), op_types_to_quantize=["Conv", "ConvTranspose"], **types, **method
        )
    finally:
        pre.unlink(missing_ok=True)
    _save_with_metadata(src, dst, dst, "int8-static-conv")
    return {"seconds": round(time.perf_counter() - t0, 1), "calibration_windows": len(calibration)}


def quantize_int8(src: Path, dst: Path, calibration: Sequence[np.ndarray]) -> dict[str, Any]:
    """Static int8 convolutions + dynamic int8 ViT linears: ``src`` (fp32 end-to-end graph) → ``dst``, atomically."""
    mid, lin_out = _hidden(dst, "conv"), _hidden(dst, "int8")
    try:
        conv = quantize_convs_static(src, mid, calibration)
        lin = quantize_vit_linears(mid, lin_out)
        _save_with_metadata(src, lin_out, dst, "int8")
    finally:
        for p in (mid, lin_out):
            p.unlink(missing_ok=True)
    return {"convs": conv, "vit_linears": lin, "mb": round(dst.stat().st_size / 2**20, 2)}


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
USAGE = "--int8 takes a folder of calibration images (.jpg, .jpeg, .png) or a text file listing image paths"


def calibration_paths(images: str | Path, count: int = 16) -> list[Path]:
    """Up to ``count`` evenly spaced image files from a folder, a list file of image paths (relative to the list's
    folder) or one image, checked without decoding; a bad source is a ValueError with one line."""
    src = Path(images)
    if src.is_dir():
        paths = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths = [p for p in paths if not p.name.startswith(".")]
        if not paths:
            what = "is empty" if not any(src.iterdir()) else "holds no images"
            raise ValueError(f"{src}: the calibration folder {what}; {USAGE}")
    elif src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
        paths = [src]
    elif src.is_file():
        try:
            entries = [ln.strip() for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (UnicodeDecodeError, OSError):
            raise ValueError(f"{src}: not a text list of image paths; {USAGE}") from None
        if not entries:
            raise ValueError(f"{src}: the calibration list names no images; {USAGE}")
        paths = [p if p.is_absolute() else src.parent / p for p in map(Path, entries)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ValueError(
                f"{src}: {len(missing)} of {len(paths)} listed calibration images do not exist (first: {missing[0]})"
            )
    else:
        raise ValueError(f"{src}: calibration images not found; {USAGE}")
    step = max(1, len(paths) // max(count, 1))
    return paths[::step][:count]


def calibration_windows(
    images: str | Path, crop: int, mean: Sequence[float], std: Sequence[float], count: int = 16
) -> list[np.ndarray]:
    """Up to ``count`` normalised (1, 3, crop, crop) centre windows of :func:`calibration_paths` (short side resized
    to the crop); an unreadable image is a ValueError naming it."""
    from PIL import Image

    from weakclip.data.io import read_image

    out = []
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    for p in calibration_paths(images, count):
        try:
            img = Image.fromarray(read_image(p))
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        scale = crop / min(img.size)
        w, h = max(crop, round(img.width * scale)), max(crop, round(img.height * scale))
        img = img.resize((w, h), Image.Resampling.BILINEAR)
        x0, y0 = (w - crop) // 2, (h - crop) // 2
        arr = (np.asarray(img.crop((x0, y0, x0 + crop, y0 + crop)), np.float32) - m) / s
        out.append(np.ascontiguousarray(arr.transpose(2, 0, 1)[None]))
    return out
