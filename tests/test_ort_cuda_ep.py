"""engines/ort_engine.py, CUDA execution provider: options and the check that CUDA really started (CPU-testable).

ONNX Runtime does not fail when the CUDA EP cannot start (missing CUDA / cuDNN libraries, or a CPU-only build given
the provider anyway): it builds a CPU session and only warns.  The engine must refuse that for device="cuda".
Here the CPU build of onnxruntime is told (monkeypatched ``get_available_providers``) that CUDA exists, so the real
ONNX Runtime takes the silent-fallback path, and the engine must raise.  A real CUDA session is exercised only on a
GPU machine with onnxruntime-gpu (``benchmarks/bench_gpu_e2e.py``'s ORT row).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from weakclip.engines import ort_engine
from weakclip.engines.base import EngineError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _tiny_onnx(path: Path) -> Path:
    """image (B, 3, H, W) → AveragePool 4 → 1×1 Conv → logits (B, 2, H/4, W/4), with WeakCLIP metadata."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(torch.randn(2, 3, 1, 1).numpy(), "w")
    graph = h.make_graph(
        [
            h.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
            h.make_node("Conv", ["pooled", "w"], ["logits"]),
        ],
        "tiny",
        [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["B", 2, "h", "w"])],
        [w],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "graph": "end_to_end",
        "class_names": json.dumps(["background", "thing"]),
        "mean": json.dumps([0.0, 0.0, 0.0]),
        "std": json.dumps([1.0, 1.0, 1.0]),
        "crop_size": "64",
        "size_divisor": "16",
        "precision": "fp32",
    }
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_cuda_provider_options_use_heuristic_conv_search() -> None:
    providers = ort_engine.select_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers == [
        ("CUDAExecutionProvider", {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC"}),
        "CPUExecutionProvider",
    ]
    auto = ort_engine.select_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert auto[0][1]["cudnn_conv_algo_search"] == "HEURISTIC" and auto[0][1]["device_id"] == 0
    assert ort_engine.select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_check_session_providers_with_a_fake_session() -> None:
    wanted = ort_engine.select_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    fell_back = SimpleNamespace(get_providers=lambda: ["CPUExecutionProvider"])
    with pytest.raises(EngineError, match=r"CUDAExecutionProvider was requested but the session started with"):
        ort_engine.check_session_providers(fell_back, wanted)
    ok = SimpleNamespace(get_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ort_engine.check_session_providers(ok, wanted) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # CPU requested: the CPU session is what was asked for
    assert ort_engine.check_session_providers(fell_back, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_engine_refuses_the_silent_cpu_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny_onnx(tmp_path / "weakclip.onnx")
    with ort_engine.OrtEngine(model) as cpu:  # the model itself is fine on the CPU
        assert cpu.providers == ["CPUExecutionProvider"]
        assert tuple(cpu(torch.randn(2, 3, 32, 48)).shape) == (2, 2, 8, 12)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA EP; the fallback check needs a build without one")
    # Pretend CUDA is available: select_providers passes CUDAExecutionProvider to the real InferenceSession, which
    # (CPU build) falls back to the CPU with a warning only.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cache = tmp_path / "optimized"
    with pytest.raises(EngineError, match=r"CUDAExecutionProvider was requested.*\['CPUExecutionProvider'\]"):
        ort_engine.OrtEngine(model, device="cuda", optimized_model_cache=cache)
    assert not [p for p in cache.iterdir() if ".cuda" in p.name], "a CPU-optimised graph was cached under a cuda key"
