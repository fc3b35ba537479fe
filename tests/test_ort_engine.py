"""Engine vs reference: the ONNX Runtime engine (engines/ort_engine.py) against the PyTorch model, through the
engine interface (``weakclip.engines.base.get_engine``) and through ``weakclip-generate``.

Uses the session's tiny export (the ``tiny_export`` fixture in conftest.py, built once).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakclip.errors import UsageError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import tiny_model  # noqa: E402  (tests/ is on sys.path under pytest)

from weakclip.engines.base import Engine, EngineError, get_engine  # noqa: E402
from weakclip.engines.ort_engine import OrtEngine, read_onnx_metadata, select_providers  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_export: tuple[Path, Path]) -> tuple[Path, Path]:
    return tiny_export


@pytest.fixture(scope="module")
def onnx_path(exported: tuple[Path, Path]) -> Path:
    return exported[0] / "weakclip.onnx"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def engine(onnx_path: Path):
    with get_engine("onnxruntime", onnx_path) as e:
        yield e


def windows(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_registry_builds_the_ort_engine_with_metadata_from_the_file(engine: Engine, model) -> None:
    assert isinstance(engine, OrtEngine) and engine.name == "onnxruntime"
    cfg = model.config
    assert engine.class_names == tuple(cfg.class_names) and engine.num_classes == 21
    assert engine.crop_size == 512 and engine.size_divisor == cfg.patch_size
    assert engine.mean == tuple(cfg.mean) and engine.std == tuple(cfg.std)
    d = engine.describe()
    assert d["engine"] == "onnxruntime" and d["providers"] == ["CPUExecutionProvider"] and d["precision"] == "fp32"
    json.dumps(d)


@pytest.mark.parametrize("shape", [(2, 512, 512), (3, 320, 320), (1, 384, 512), (4, 128, 96)])
def test_engine_equals_torch_logits(engine: Engine, model, shape: tuple[int, int, int]) -> None:
    x = windows(*shape, seed=shape[1])
    with torch.no_grad():
        ref = model(x).logits
    out = engine(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == ref.shape
    d = (out - ref).abs().max().item()
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    print(f"{shape}: max |Δlogit| {d:.2e}, argmax agreement {100 * agree:.3f} %")
    assert d <= 1e-3 and agree >= 0.999


def test_io_binding_outputs(onnx_path: Path) -> None:
    x, y = windows(2, 256, 320, 1), windows(2, 256, 320, 2)
    plain = OrtEngine(onnx_path, io_binding=False)
    safe = OrtEngine(onnx_path)  # default: a fresh tensor per call
    reuse = OrtEngine(onnx_path, reuse_outputs=True)
    ref_x, ref_y = plain(x), plain(y)
    a, b = safe(x), safe(y)  # first call learns the shape, second uses a preallocated output
    c = safe(x)
    assert torch.equal(a, ref_x) and torch.equal(b, ref_y) and torch.equal(c, ref_x)
    assert a.data_ptr() != c.data_ptr()  # independent results
    r1, r2 = reuse(x), reuse(y)
    r3 = reuse(x)
    assert torch.equal(r3, ref_x) and r2.data_ptr() == r3.data_ptr()  # same buffer while the shape repeats
    r4 = reuse(windows(1, 128, 128))  # new shape: works, new buffer
    assert r4.shape == (1, 21, 32, 32)
    assert torch.equal(reuse(y), ref_y)
    del r1


def test_threads_and_optimisation_levels(onnx_path: Path, engine: Engine) -> None:
    x = windows(1, 192, 256, 4)
    ref = engine(x)
    e = OrtEngine(onnx_path, intra_op_threads=1, graph_optimization="basic")
    assert e.intra_op_threads == 1 and e.inter_op_threads == 1
    assert (e(x) - ref).abs().max().item() <= 1e-4


def test_optimized_model_cache(onnx_path: Path, engine: Engine, tmp_path: Path) -> None:
    x = windows(2, 256, 256, 5)
    first = OrtEngine(onnx_path, optimized_model_cache=tmp_path)
    files = list(tmp_path.glob("weakclip.*.onnx"))
    assert len(files) == 1 and first.cache_file == files[0]
    assert read_onnx_metadata(files[0]).get("graph") == "end_to_end"
    second = OrtEngine(onnx_path, optimized_model_cache=tmp_path)  # loads the cached graph
    assert second.cache_file == files[0]
    assert torch.allclose(second(x), engine(x), atol=1e-5)
    assert len(list(tmp_path.glob("*.onnx"))) == 1


def test_fp16_model_through_the_engine(exported: tuple[Path, Path], engine: Engine) -> None:
    e = get_engine("onnxruntime", exported[0] / "weakclip_fp16.onnx")
    assert e.precision == "fp16"
    x = windows(2, 256, 320, 6)
    a, b = e(x), engine(x)
    assert torch.isfinite(a).all() and (a.argmax(1) == b.argmax(1)).float().mean() >= 0.99
    with pytest.raises(EngineError, match="precision"):
        get_engine("onnxruntime", exported[0] / "weakclip.onnx", precision="fp16")


def test_devices_and_providers(onnx_path: Path) -> None:
    assert select_providers("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    cuda = select_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    # HEURISTIC cuDNN algorithm search: windows have dynamic sizes (see tests/test_ort_cuda_ep.py)
    assert cuda == [
        ("CUDAExecutionProvider", {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC"}),
        "CPUExecutionProvider",
    ]
    assert select_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0][0] == "CUDAExecutionProvider"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(EngineError, match="CUDA execution provider"):
            get_engine("onnxruntime", onnx_path, device="cuda")
    assert get_engine("onnxruntime", onnx_path, device="auto").providers[0] in (
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
    )
    with pytest.raises(EngineError, match="unknown device"):
        get_engine("onnxruntime", onnx_path, device="tpu")


def test_refuses_graphs_it_cannot_run(exported: tuple[Path, Path], tmp_path: Path) -> None:
    out = exported[0]
    with pytest.raises(EngineError, match="tensorrt"):
        get_engine("onnxruntime", out / "weakclip_custom.onnx")
    with pytest.raises(EngineError, match="encoder"):
        get_engine("onnxruntime", out / "encoder.onnx")
    # a file that is missing or not ONNX at all is refused by the registry's file check (one usage line)
    with pytest.raises(UsageError, match="missing.onnx: missing; the onnxruntime engine expects an ONNX model"):
        get_engine("onnxruntime", tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(UsageError, match="bad.onnx: this is not a model file"):
        get_engine("onnxruntime", bad)
    from weakclip.engines.ort_engine import OrtEngine

    with pytest.raises(EngineError):  # the engine itself, given the file directly, still refuses it
        OrtEngine(bad)


def test_rejects_bad_windows(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine(torch.randn(1, 3, 100, 128))  # not a multiple of 16
    with pytest.raises(ValueError):
        engine(torch.randn(1, 3, 128, 128, dtype=torch.float64))


def test_generate_with_the_ort_engine_matches_the_torch_engine(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from weakclip.cli.generate import main

    out_dir, ckpt = exported
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(96, 128), (160, 112)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    masks = {}
    for engine, model in (("onnxruntime", out_dir / "weakclip.onnx"), ("torch", ckpt)):
        out = tmp_path / engine
        argv = ["--images", str(images), "--out", str(out), "--engine", engine, "--model", str(model)]
        assert main([*argv, "--workers", "0", "--no-progress"]) == 0
        masks[engine] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
    assert masks["onnxruntime"].keys() == masks["torch"].keys() and len(masks["torch"]) == 2
    for name, m in masks["torch"].items():
        assert (masks["onnxruntime"][name] == m).mean() >= 0.999, name


def test_generate_ort_matches_torch_on_the_synthetic_set(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """The acceptance check of the ONNX Runtime engine: ≥ 99.5 % pixel agreement with the torch engine over a
    synthetic VOC-layout set (label masking on, as in the real pipeline)."""
    from weakclip.cli.generate import main
    from weakclip.data.synthetic import make_synthetic_dataset

    data = tmp_path / "syn"
    make_synthetic_dataset(data, images=12, seed=3, val_images=1)
    out_dir, ckpt = exported
    agree = total = 0
    masks = {}
    for engine, model in (("onnxruntime", out_dir / "weakclip.onnx"), ("torch", ckpt)):
        out = tmp_path / engine
        argv = [
            "--images",
            str(data / "ImageSets/Segmentation/train.txt"),
            "--image-root",
            str(data / "JPEGImages"),
            "--labels",
            str(data / "cls_labels.json"),
            "--out",
            str(out),
            "--engine",
            engine,
            "--model",
            str(model),
            "--workers",
            "0",
            "--no-progress",
        ]
        assert main(argv) == 0
        masks[engine] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
    assert len(masks["torch"]) == 12 and masks["onnxruntime"].keys() == masks["torch"].keys()
    for name, m in masks["torch"].items():
        agree += int((masks["onnxruntime"][name] == m).sum())
        total += m.size
    assert agree / total >= 0.995
