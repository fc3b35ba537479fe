"""TensorRT-family check that runs on CPU CI: TensorRT for RTX (TensorRT-RTX) builds engines ahead of time (AOT)
without a GPU or a CUDA driver, so we can check on every CI run that

* the exported end-to-end graphs (``weakclip.onnx`` and ``weakclip_fp16.onnx``) parse with NVIDIA's ONNX parser and
  build to a serialized engine with one dynamic-shape optimisation profile (B 1/4/8, H, W 64/512/512);
* the parsed network's I/O (and so the engine's) has the exported names and dtypes;
* the custom-op graph (``weakclip_custom.onnx``) does NOT parse without the co-attention plugin, and the parser's
  error names the ``WeakCLIPCoAttention`` node: the plugin is required, not silently optional.

Needs the two wheels (about 100 MB download, 230 MB installed; the package imports as ``tensorrt_rtx_bindings``)::

    pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116

and skips (with that reason) where they are not installed.  Running the engine needs a GPU TensorRT-RTX supports
(compute capability 8.0/8.6/8.9/12.x by default; Hopper/SM90 data-centre GPUs are not among them) and a CUDA 13
driver, so this file never deserializes what it builds: without a driver ``Runtime.deserialize_cuda_engine`` fails
with "cudaError 35: CUDA driver version is insufficient".  The AOT build itself needs neither (it is TensorRT-RTX's
default: no ``ComputeCapability`` has to be set; ``ComputeCapability.CURRENT`` is the one setting that needs a GPU).

Uses the session's tiny export (the ``tiny_export`` fixture in conftest.py, built once).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from weakclip.engines import trt_build as tb

pytestmark = pytest.mark.tensorrt

PIP_HINT = "pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116"


def _import_tensorrt_rtx():
    """The TensorRT-RTX Python module: ``tensorrt_rtx`` (full package) or ``tensorrt_rtx_bindings`` (bare wheels)."""
    errors = []
    for name in ("tensorrt_rtx", "tensorrt_rtx_bindings"):
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError) as e:  # OSError: the shared libraries are there but do not load
            errors.append(f"{name}: {e}")
            continue
        if hasattr(module, "Builder") and hasattr(module, "OnnxParser"):
            return module
        errors.append(f"{name}: has no Builder/OnnxParser")
    pytest.skip(
        f"TensorRT-RTX Python bindings not importable ({'; '.join(errors)}); {PIP_HINT}", allow_module_level=True
    )


trt = _import_tensorrt_rtx()
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # the tiny_export fixture exports with torch's dynamo exporter

# One optimisation profile over the exported range: B 1..8, H and W multiples of 16 from 64 up to the crop (512).
PROFILE = {"min": (1, 3, 64, 64), "opt": (4, 3, 512, 512), "max": (8, 3, 512, 512)}
CUSTOM_OP = "WeakCLIPCoAttention"


class _LogView:
    """The messages of the shared module-level logger (``trt_build.get_logger``) since this view was made.

    TensorRT keeps one process-wide logger (the first one given; later ones are ignored), so a fresh logger per test
    would miss the builder's messages after the first test; every TensorRT-RTX user in this process shares one.
    """

    def __init__(self) -> None:
        self.logger = tb.get_logger(trt)
        self.mark = self.logger.count

    @property
    def messages(self) -> list[str]:
        return [m for i, m in self.logger.messages if i >= self.mark]

    def text(self) -> str:
        return self.logger.text(since=self.mark)


def _parse(path: Path):
    """(builder, network, parser, logger, ok, parser errors) for one ONNX file."""
    view = _LogView()
    logger = view.logger
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT-RTX networks are always strongly typed
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    return builder, network, parser, view, ok, errors


def _describe(errors) -> str:
    return "\n".join(f"{e.code()}: {e.desc()} (node {e.node_name()!r}, op {e.node_operator()!r})" for e in errors)


_ONNX_TO_TRT = {
    onnx.TensorProto.FLOAT: trt.float32,
    onnx.TensorProto.FLOAT16: trt.float16,
    onnx.TensorProto.BFLOAT16: trt.bfloat16,
    onnx.TensorProto.INT32: trt.int32,
    onnx.TensorProto.INT64: trt.int64,
    onnx.TensorProto.BOOL: trt.bool,
}


def _onnx_io(path: Path) -> tuple[dict, dict]:
    """({input name: (trt dtype, rank)}, {output name: (trt dtype, rank)}) from the ONNX file itself."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def io(values):
        return {
            v.name: (_ONNX_TO_TRT[v.type.tensor_type.elem_type], len(v.type.tensor_type.shape.dim))
            for v in values
            if v.name not in initializers
        }

    return io(graph.input), io(graph.output)


@pytest.fixture(scope="module")
def onnx_dir(tiny_export: tuple[Path, Path]) -> Path:
    return tiny_export[0]


@pytest.mark.parametrize("graph", ["weakclip.onnx", "weakclip_fp16.onnx"])
def test_aot_build_end_to_end(onnx_dir: Path, graph: str) -> None:
    path = onnx_dir / graph
    assert path.is_file(), f"{graph} missing from the export ({sorted(p.name for p in onnx_dir.iterdir())})"
    builder, network, _parser, logger, ok, errors = _parse(path)
    assert ok, f"TensorRT-RTX could not parse {graph}:\n{_describe(errors)}\n{logger.text()}"

    # The parsed network's I/O is what the engine's I/O tensors will be: same names, dtypes and ranks as the ONNX.
    onnx_inputs, onnx_outputs = _onnx_io(path)
    inputs = {t.name: (t.dtype, len(t.shape)) for t in (network.get_input(i) for i in range(network.num_inputs))}
    outputs = {t.name: (t.dtype, len(t.shape)) for t in (network.get_output(i) for i in range(network.num_outputs))}
    assert inputs == onnx_inputs == {"image": (trt.float32, 4)}
    assert outputs == onnx_outputs
    assert set(outputs) == {"logits", "score_map"}
    image = network.get_input(0)
    assert tuple(image.shape) == (-1, 3, -1, -1), "batch, height and width must stay dynamic"

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", PROFILE["min"], PROFILE["opt"], PROFILE["max"])
    assert profile  # a profile is falsy when its shapes are inconsistent
    assert config.add_optimization_profile(profile) == 0
    # No compute capability is set: TensorRT-RTX's default AOT targets (portable across its supported GPUs), which
    # need no GPU at build time.
    assert config.num_compute_capabilities == 0

    engine = builder.build_serialized_network(network, config)
    assert engine is not None, f"TensorRT-RTX AOT build of {graph} failed:\n{logger.text()}"
    blob = bytes(engine)
    assert len(blob) == engine.nbytes > 0
    # The engine cannot be deserialized without a CUDA driver; its plan does carry the I/O tensor names.
    for name in (*inputs, *outputs):
        assert name.encode() in blob, f"I/O tensor {name!r} not found in the serialized {graph} engine"
    assert not [m for m in logger.messages if m.startswith(("[ERROR]", "[INTERNAL_ERROR]"))], logger.text()


def test_custom_op_graph_needs_the_plugin(onnx_dir: Path) -> None:
    """Without the WeakCLIPCoAttention plugin registered, the custom-op graph must fail to parse, naming the node."""
    registry = trt.get_plugin_registry()
    if any(c.name == CUSTOM_OP for c in registry.all_creators):
        pytest.skip(f"the {CUSTOM_OP} plugin is registered in this process; the negative check needs it absent")
    path = onnx_dir / "weakclip_custom.onnx"
    assert path.is_file(), "weakclip_custom.onnx missing: the tiny export should be made with --custom-op"
    _builder, _network, _parser, logger, ok, errors = _parse(path)
    assert not ok, "weakclip_custom.onnx parsed although no WeakCLIPCoAttention plugin is registered"
    described = _describe(errors)
    assert any(e.node_operator() == CUSTOM_OP for e in errors), described
    assert CUSTOM_OP in described and "Plugin not found" in described, described
