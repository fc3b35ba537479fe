"""engines/trt_build.py and trt_engine.py: cache key, engine cache, builds and (on a GPU with TensorRT) parity with the torch engine.

What runs where:

* ``cache_key`` / ``make_profile`` and ``get_engine('tensorrt')`` without TensorRT: anywhere (CPU CI).
* ``build_serialized`` and the cache (``cached_build``) with real builds: where TensorRT-RTX is installed (its AOT
  builder needs no GPU): ``pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116``;
  marked ``tensorrt``, skipped with that reason otherwise.  The engines are never deserialised there.
* Execution parity vs the torch engine: needs a CUDA GPU and the ``tensorrt`` package; marked ``gpu`` + ``tensorrt``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from weakclip.data.io import file_sha256
from weakclip.engines import trt_build as tb
from weakclip.engines import trt_engine as te
from weakclip.engines.base import EngineError, get_engine

RTX_HINT = "pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116"
# A small profile keeps the AOT builds short (the tiny model's crop is 512).
PROFILE = tb.make_profile(512, max_batch=2, min_size=64, opt_size=128)
GPU = ("Test GPU name", (8, 6))  # key material only: the AOT build does not target a particular GPU


def _rtx():
    errors = []
    for name in ("tensorrt_rtx", "tensorrt_rtx_bindings"):
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError) as e:
            errors.append(f"{name}: {e}")
            continue
        if hasattr(module, "Builder") and hasattr(module, "OnnxParser"):
            return module
    pytest.skip(f"TensorRT-RTX Python bindings not importable ({'; '.join(errors)}); {RTX_HINT}")


def _tensorrt_installed() -> bool:
    try:
        tb.import_tensorrt("tensorrt")
    except EngineError:
        return False
    return True


def _key(**changes):
    args = {
        "onnx_digest": "a" * 64,
        "trt_version": "tensorrt-10.13.0",
        "gpu": ("NVIDIA H100 80GB HBM3", (9, 0)),
        "precision": "fp32",
        "profile": tb.make_profile(512),
        "strongly_typed": False,
        "plugin_digest": None,
    }
    args.update(changes)
    return tb.cache_key(args.pop("onnx_digest"), **args)[0]


def test_cache_key_depends_on_everything_that_makes_the_engine(tmp_path: Path) -> None:
    base = _key()
    assert base == _key(), "the key must be deterministic"
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"onnx bytes one")
    b.write_bytes(b"onnx bytes two")
    variants = {
        "onnx bytes": _key(onnx_digest=file_sha256(a)),
        "onnx bytes 2": _key(onnx_digest=file_sha256(b)),
        "precision": _key(precision="fp16"),
        "trt version": _key(trt_version="tensorrt-10.14.1"),
        "trt module": _key(trt_version="tensorrt_rtx-10.13.0"),
        "gpu name": _key(gpu=("NVIDIA A100-SXM4-80GB", (9, 0))),
        "compute capability": _key(gpu=("NVIDIA H100 80GB HBM3", (8, 9))),
        "profile batch": _key(profile=tb.make_profile(512, max_batch=4)),
        "profile size": _key(profile=tb.make_profile(512, min_size=128)),
        "profile opt": _key(profile=tb.make_profile(512, opt_size=256)),
        "typing": _key(strongly_typed=True),
        "plugin": _key(plugin_digest="b" * 64),
    }
    keys = [base, *variants.values()]
    assert len(set(keys)) == len(keys), variants
    # external data is part of the graph's bytes
    digest = file_sha256(a)
    (tmp_path / "a.onnx.data").write_bytes(b"weights")
    assert file_sha256(a) != digest


def test_make_profile() -> None:
    assert tb.make_profile(512, max_batch=8, min_size=64) == {
        "min": (1, 3, 64, 64),
        "opt": (8, 3, 512, 512),
        "max": (8, 3, 512, 512),
    }
    for bad in ({"min_size": 40}, {"min_size": 1024}, {"opt_size": 32}, {"max_batch": 0}):
        with pytest.raises(EngineError):
            tb.make_profile(512, **bad)


def test_get_engine_without_tensorrt_names_the_install(tmp_path: Path) -> None:
    if _tensorrt_installed():
        pytest.skip("the tensorrt package is installed here; this checks the error when it is not")
    onnx = pytest.importorskip("onnx")
    model = tmp_path / "weakclip.onnx"  # a valid (empty-graph) ONNX model: get_engine checks the file kind first
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(model))
    with pytest.raises(EngineError, match="pip install tensorrt") as info:
        get_engine("tensorrt", model)
    assert "TensorRT is not available" in str(info.value)


class _FakeConfig:
    """Records the builder-flag calls (TensorRT's IBuilderConfig API), starting from TensorRT's defaults."""

    def __init__(self, flags: set[str]) -> None:
        self.flags = set(flags)
        self.calls: list[tuple[str, str]] = []

    def set_flag(self, flag: str) -> None:
        self.calls.append(("set", flag))
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.calls.append(("clear", flag))
        self.flags.discard(flag)


def test_fp32_clears_tf32_fake_tensorrt_10() -> None:
    """TensorRT 10 (weakly typed): fp32 clears TF32 (on by default), fp16 sets FP16 and leaves TF32 alone."""
    fake = SimpleNamespace(BuilderFlag=SimpleNamespace(TF32="TF32", FP16="FP16"))
    cfg = _FakeConfig({"TF32"})  # NvInfer.h: kTF32 "Enabled by default"
    tb.configure_precision(fake, cfg, "fp32", strongly_typed=False)
    assert cfg.calls == [("clear", "TF32")] and cfg.flags == set()
    cfg = _FakeConfig({"TF32"})
    tb.configure_precision(fake, cfg, "fp16", strongly_typed=False)
    assert cfg.calls == [("set", "FP16")] and cfg.flags == {"TF32", "FP16"}
    cfg = _FakeConfig({"TF32"})  # strongly typed fp16: the graph's types, no FP16 flag
    tb.configure_precision(fake, cfg, "fp16", strongly_typed=True)
    assert cfg.calls == []
    with pytest.raises(EngineError, match="precision"):
        tb.configure_precision(fake, _FakeConfig(set()), "bf16", strongly_typed=False)


@pytest.mark.tensorrt
def test_fp32_clears_tf32_on_a_real_builder_config() -> None:
    trt = _rtx()
    builder = trt.Builder(tb.get_logger(trt))
    config = builder.create_builder_config()
    assert config.get_flag(trt.BuilderFlag.TF32), "TF32 is expected to be on by default (what the fix is about)"
    tb.configure_precision(trt, config, "fp32", tb.strongly_typed_only(trt))
    assert not config.get_flag(trt.BuilderFlag.TF32)
    config = builder.create_builder_config()
    tb.configure_precision(trt, config, "fp16", tb.strongly_typed_only(trt))
    assert config.get_flag(trt.BuilderFlag.TF32)


def test_cache_key_records_tf32() -> None:
    _, fp32 = tb.cache_key("a" * 64, trt_version="t", gpu=GPU, precision="fp32", profile=PROFILE, strongly_typed=True)
    _, fp16 = tb.cache_key("a" * 64, trt_version="t", gpu=GPU, precision="fp16", profile=PROFILE, strongly_typed=True)
    assert fp32["tf32"] is False and fp16["tf32"] is True and fp32["format"] >= 2  # old TF32 "fp32" engines rebuilt


@pytest.mark.tensorrt
@pytest.mark.parametrize(("graph", "precision"), [("weakclip.onnx", "fp32"), ("weakclip_fp16.onnx", "fp16")])
def test_build_serialized_with_tensorrt_rtx(
    tiny_export: tuple[Path, Path], graph: str, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt = _rtx()
    assert tb.strongly_typed_only(trt), "TensorRT-RTX only builds strongly typed networks"
    seen = []
    real = tb.configure_precision

    def spy(trt_, config, precision_, strong):  # the flags as the build will see them
        real(trt_, config, precision_, strong)
        seen.append((precision_, config.get_flag(trt.BuilderFlag.TF32)))

    monkeypatch.setattr(tb, "configure_precision", spy)
    blob = tb.build_serialized(tiny_export[0] / graph, trt, precision, PROFILE)
    assert isinstance(blob, bytes) and len(blob) > 0
    assert b"logits" in blob and b"image" in blob  # the plan carries the I/O tensor names
    assert seen == [(precision, precision != "fp32")], "fp32 builds must run with TF32 cleared"


@pytest.mark.tensorrt
def test_one_logger_per_tensorrt_module_keeps_the_second_engines_errors() -> None:
    """TensorRT keeps the first logger it is given process-wide; with one module-level logger the error of a second
    builder ("engine") still reaches the text shown in our EngineError.  In a fresh process: the global logger is
    per process, and other tests in this session already created builders."""
    _rtx()
    script = textwrap.dedent(
        """
        from weakclip.engines import trt_build as tb
        trt = tb.import_tensorrt("tensorrt_rtx")
        logger = tb.get_logger(trt)
        assert logger is tb.get_logger(trt)
        first = trt.Builder(tb.get_logger(trt))            # engine 1
        second = trt.Builder(tb.get_logger(trt))           # engine 2
        mark = logger.count
        plan = second.build_serialized_network(second.create_network(0), second.create_builder_config())
        assert plan is None
        text = logger.text(since=mark)
        assert "Network must have at least one output" in text, text
        assert "differs from one already registered" not in logger.text(n=500), logger.text(n=500)
        assert logger.text(since=logger.count) == "(no messages)"
        print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.tensorrt
def test_tensorrt_rtx_refuses_sm90() -> None:
    trt = _rtx()
    targets = tb.rtx_targets(trt)
    assert (8, 6) in targets and (9, 0) not in targets, targets
    tb.check_rtx_gpu(trt, ("NVIDIA GeForce RTX 3090", (8, 6)))
    tb.check_rtx_gpu(trt, ("NVIDIA GeForce RTX 5090", (12, 0)))
    for gpu in (("NVIDIA H100 80GB HBM3", (9, 0)), ("NVIDIA H200", (9, 0))):
        with pytest.raises(EngineError, match=r"sm_90.*backend='tensorrt'"):
            tb.check_rtx_gpu(trt, gpu)


def test_tensorrt_rtx_targets_without_the_enum() -> None:
    fake = SimpleNamespace(__name__="tensorrt_rtx", __version__="1.0")
    assert (9, 0) not in tb.rtx_targets(fake) and (8, 9) in tb.rtx_targets(fake)
    with pytest.raises(EngineError, match="sm_90"):
        tb.check_rtx_gpu(fake, ("NVIDIA H100 PCIe", (9, 0)))


@pytest.mark.tensorrt
def test_engine_checks_the_gpu_before_using_tensorrt_rtx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TrtEngine(backend='tensorrt_rtx') on an H100 stops with the clear message before reading or building."""
    _rtx()
    model = tmp_path / "weakclip.onnx"
    model.write_bytes(b"not read: the GPU check comes first")
    monkeypatch.setattr(te, "current_gpu", lambda index: ("NVIDIA H100 80GB HBM3", (9, 0)))
    with pytest.raises(EngineError, match=r"cannot build or run engines for NVIDIA H100 80GB HBM3.*sm_90"):
        te.TrtEngine(model, backend="tensorrt_rtx")


@pytest.mark.tensorrt
def test_strongly_typed_precision_is_the_graphs(tiny_export: tuple[Path, Path]) -> None:
    trt = _rtx()
    with pytest.raises(EngineError, match="strongly typed"):
        tb.build_serialized(tiny_export[0] / "weakclip.onnx", trt, "fp16", PROFILE)
    with pytest.raises(EngineError, match="fp16 graph, fp32 was asked for"):
        tb.graph_for(tiny_export[0] / "weakclip_fp16.onnx", {"precision": "fp16"}, "fp32", True)
    fp16 = tb.graph_for(tiny_export[0] / "weakclip.onnx", {"precision": "fp32"}, "fp16", True)
    assert fp16.name == "weakclip_fp16.onnx"
    assert tb.graph_for(tiny_export[0] / "weakclip.onnx", {"precision": "fp32"}, "fp16", False).name == (
        "weakclip.onnx"
    )  # TensorRT 10: BuilderFlag.FP16 on the fp32 graph


@pytest.mark.tensorrt
def test_engine_cache_rebuilds_stale_or_corrupt_engines(tiny_export: tuple[Path, Path], tmp_path: Path) -> None:
    trt = _rtx()
    onnx_path = tiny_export[0] / "weakclip.onnx"
    key, material = tb.cache_key(
        file_sha256(onnx_path),
        trt_version=tb.trt_identity(trt),
        gpu=GPU,
        precision="fp32",
        profile=PROFILE,
        strongly_typed=True,
    )
    builds = []

    def build() -> bytes:
        blob = tb.build_serialized(onnx_path, trt, "fp32", PROFILE)
        builds.append(len(blob))
        return blob

    engine_path = tmp_path / "cache" / "weakclip.fp32.engine"
    blob, rebuilt = tb.cached_build(engine_path, key, material, build, metadata={"graph": "end_to_end"})
    assert rebuilt and len(builds) == 1 and blob and engine_path.read_bytes() == blob
    side = json.loads(tb.sidecar_path(engine_path).read_text())
    assert side["key"] == key and side["material"] == material and side["metadata"] == {"graph": "end_to_end"}
    assert sorted(p.name for p in engine_path.parent.iterdir()) == ["weakclip.fp32.engine", "weakclip.fp32.engine.json"]

    again, rebuilt = tb.cached_build(engine_path, key, material, build)
    assert not rebuilt and again == blob and len(builds) == 1, "a matching cache entry must be reused"

    # a sidecar with another key (other TensorRT / GPU / ONNX / ...) → rebuilt, never used
    other_key, other_material = tb.cache_key(
        file_sha256(onnx_path),
        trt_version=tb.trt_identity(trt),
        gpu=("Another GPU", (8, 9)),
        precision="fp32",
        profile=PROFILE,
        strongly_typed=True,
    )
    _, rebuilt = tb.cached_build(engine_path, other_key, other_material, build)
    assert rebuilt and len(builds) == 2
    assert json.loads(tb.sidecar_path(engine_path).read_text())["key"] == other_key

    # a truncated engine under a matching sidecar → rebuilt
    engine_path.write_bytes(engine_path.read_bytes()[:100])
    _, rebuilt = tb.cached_build(engine_path, other_key, other_material, build)
    assert rebuilt and len(builds) == 3 and len(engine_path.read_bytes()) == builds[-1]


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_parity_with_torch_engine(tiny_export: tuple[Path, Path], tmp_path: Path, precision: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not _tensorrt_installed():
        pytest.skip(f"needs TensorRT ({tb.INSTALL_HINT})")
    onnx_dir, ckpt = tiny_export
    ref = get_engine("torch", ckpt, device="cuda")
    with get_engine("tensorrt", onnx_dir / "weakclip.onnx", precision=precision, cache_dir=tmp_path, max_batch=4) as e:
        assert e.class_names == ref.class_names and e.crop_size == ref.crop_size
        assert e.rebuilt
        gen = torch.Generator().manual_seed(0)
        for shape in [(2, 3, 512, 512), (1, 3, 160, 96), (5, 3, 128, 128), (2, 3, 160, 96)]:
            x = torch.randn(shape, generator=gen)
            got, want = e(x), ref(x).cpu()
            assert got.device.type == "cpu" and got.dtype == torch.float32 and got.shape == want.shape
            if precision == "fp32":
                assert (got - want).abs().max().item() <= 1e-3, shape
            else:
                agree = (got.argmax(1) == want.argmax(1)).float().mean().item()
                assert agree >= 0.99, (shape, agree)
    # a second engine on the same cache reuses the engine
    with get_engine("tensorrt", onnx_dir / "weakclip.onnx", precision=precision, cache_dir=tmp_path, max_batch=4) as e:
        assert not e.rebuilt
    ref.close()
