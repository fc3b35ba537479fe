"""Building TensorRT engines from the exported end-to-end graphs, and the on-disk engine cache.

:func:`resolve_plan` is what the runner (:mod:`weakclip.engines.trt_engine`) calls: given the model file (an .onnx
graph or a built ``.engine`` with its JSON sidecar) it returns the serialized engine plus what the runner needs.

* **Build** (:func:`build_serialized`): NVIDIA's ONNX parser, one optimisation profile over batch 1..``max_batch``
  and H, W ``min_size``..crop (opt = ``opt_size`` or the crop, batch opt = ``max_batch``).  Graphs with the
  ``WeakCLIPCoAttention`` node (metadata ``graph`` = ``end_to_end_custom``) need the plugin library
  (``build/libweakclip_trt_plugin.so``, ``$WEAKCLIP_TRT_PLUGIN`` or ``plugin_library=``), loaded before parsing and
  before deserialising.
* **fp16**: TensorRT 10 → ``BuilderFlag.FP16`` on the fp32 graph (weakly typed).  TensorRT >= 11 and TensorRT-RTX
  only build strongly typed networks, so the precision is the graph's: the ``<stem>_fp16.onnx`` export is parsed.
* **Cache**: ``<cache_dir>/<onnx stem>.<precision>.engine`` plus a JSON sidecar holding the key (sha256 of the ONNX
  bytes incl. external data, plugin library bytes, TensorRT module and version, GPU name and compute capability,
  precision, typing mode, profile, workspace) and the engine's sha256.  A missing, stale or corrupted engine is
  rebuilt, never used; writes are atomic.

Nothing here needs a GPU beyond what the TensorRT builder needs (TensorRT-RTX builds ahead of time on CPU); the
``tensorrt`` module is imported only when asked for.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weakclip.data.io import atomic_path, file_sha256
from weakclip.engines.base import EngineError, PrecisionError
from weakclip.engines.ort_engine import read_onnx_metadata
from weakclip.model.plugin_names import plugin_spec

PRECISIONS = ("fp32", "fp16")
GRAPH_KINDS = ("end_to_end", "end_to_end_custom")  # image → logits (+ score_map); *_custom has the plugin node
CUSTOM_KINDS = ("end_to_end_custom",)
BACKENDS = ("tensorrt", "tensorrt_rtx")
INSTALL_HINT = (
    "pip install tensorrt (TensorRT >= 10; needs an NVIDIA driver and a CUDA GPU), or use backend='tensorrt_rtx' "
    "with TensorRT for RTX (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)"
)
PLUGIN_ENV = "WEAKCLIP_TRT_PLUGIN"
PLUGIN_BUILD_COMMAND = "cmake -S . -B build -DTENSORRT_ROOT=/path/to/TensorRT && cmake --build build -j"
REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_FORMAT = 2  # bump when the key material or the sidecar layout changes (2: fp32 without TF32)
INPUT_NAME, OUTPUT_NAME = "image", "logits"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


# ----------------------------------------------------------------------------------------------------------------
# TensorRT module helpers (no GPU needed).


def import_tensorrt(backend: str | None = None) -> Any:
    """The TensorRT Python module for ``backend`` ("tensorrt" default, "tensorrt_rtx"); EngineError with the
    install hint when it is missing or does not load."""
    backend = backend or "tensorrt"
    if backend not in BACKENDS:
        raise EngineError(f"tensorrt engine: backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    names = ("tensorrt_rtx", "tensorrt_rtx_bindings") if backend == "tensorrt_rtx" else ("tensorrt",)
    errors = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError) as e:  # OSError: the package is there, its shared libraries do not load
            errors.append(f"{name}: {e}")
            continue
        if hasattr(module, "Builder") and hasattr(module, "OnnxParser"):
            return module
        errors.append(f"{name}: no Builder/OnnxParser (a stub package?)")
    raise EngineError(f"tensorrt engine: TensorRT is not available ({'; '.join(errors)}); {INSTALL_HINT}")


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def is_tensorrt_rtx(trt: Any) -> bool:
    return trt.__name__.split(".")[0].startswith("tensorrt_rtx")


def strongly_typed_only(trt: Any) -> bool:
    """True for TensorRT >= 11 and TensorRT-RTX (no weakly typed networks, no BuilderFlag.FP16)."""
    return is_tensorrt_rtx(trt) or trt_major(trt) >= 11 or not hasattr(trt.BuilderFlag, "FP16")


def trt_identity(trt: Any) -> str:
    return f"{trt.__name__.split('.')[0]}-{trt.__version__}"


@functools.cache
def _logger_class(trt: Any) -> type:
    class Logger(trt.ILogger):
        """Keeps the last warnings and errors (numbered) so a failing parse, build or deserialisation can show them."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: collections.deque[tuple[int, str]] = collections.deque(maxlen=500)
            self.count = 0  # messages logged so far (a mark for text(since=...))

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                text = f"[{severity.name}] {msg}"
            elif severity == trt.ILogger.Severity.WARNING:
                text = f"[WARNING] {msg}"
            else:
                return
            self.messages.append((self.count, text))
            self.count += 1

        def text(self, n: int = 20, since: int = 0) -> str:
            """The last ``n`` kept messages logged after mark ``since`` (a ``count`` read before the operation)."""
            kept = [m for i, m in self.messages if i >= since]
            return "\n".join(kept[-n:]) or "(no messages)"

    return Logger


@functools.cache
def get_logger(trt: Any) -> Any:
    """THE logger of TensorRT module ``trt``, created once per module and passed to every Builder, OnnxParser and
    Runtime.  TensorRT keeps one process-wide logger (the first one it is given; a different one passed later is
    ignored with a warning), so a logger per engine would leave the second engine's error messages empty."""
    return _logger_class(trt)()


# TensorRT-RTX compute-capability targets when the module does not list them (its ComputeCapability enum does).
_RTX_KNOWN_TARGETS = ((7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1))


def rtx_targets(trt: Any) -> tuple[tuple[int, int], ...]:
    """Compute capabilities TensorRT-RTX module ``trt`` can build for (from ``trt.ComputeCapability.SM<nn>``)."""
    enum = getattr(trt, "ComputeCapability", None)
    names = [n for n in dir(enum) if re.fullmatch(r"SM\d{2,3}", n)] if enum is not None else []
    if not names:
        return _RTX_KNOWN_TARGETS
    return tuple(sorted((int(n[2:-1]), int(n[-1])) for n in names))


def check_rtx_gpu(trt: Any, gpu: Sequence[Any]) -> None:
    """EngineError unless TensorRT-RTX has a target for ``gpu`` = (name, (major, minor)).  TensorRT-RTX is for
    consumer / workstation GPUs: it has no SM90 (Hopper: H100, H200) or SM100 target, and an engine it builds
    cannot run there."""
    name, cc = gpu
    cc = (int(cc[0]), int(cc[1]))
    targets = rtx_targets(trt)
    if cc not in targets:
        have = ", ".join(f"sm_{a}{b}" for a, b in targets)
        raise EngineError(
            f"tensorrt engine: {trt_identity(trt)} cannot build or run engines for {name} (compute capability "
            f"{cc[0]}.{cc[1]}, sm_{cc[0]}{cc[1]}): its targets are {have}. Use backend='tensorrt' (TensorRT 10/11, "
            f"pip install tensorrt) on this GPU"
        )


def configure_precision(trt: Any, config: Any, precision: str, strongly_typed: bool) -> None:
    """Builder flags for ``precision`` on ``config``.

    fp32 means IEEE fp32: TensorRT enables ``BuilderFlag.TF32`` by default (NvInfer.h: "Enabled by default"), which
    rounds matmul / convolution inputs to 10-bit mantissas on Ampere and newer, so it is cleared.  fp16 on a weakly
    typed network (TensorRT 10) sets ``BuilderFlag.FP16``; strongly typed networks take the graph's types.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"tensorrt engine: precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)


def default_plugin_library() -> Path:
    """``$WEAKCLIP_TRT_PLUGIN`` if set, else ``<repo>/build/libweakclip_trt_plugin.so``."""
    env = os.environ.get(PLUGIN_ENV)
    return Path(env) if env else REPO_ROOT / "build" / "libweakclip_trt_plugin.so"


_LOADED_PLUGINS: dict[str, Any] = {}


def load_plugin_library(trt: Any, path: str | os.PathLike) -> None:
    """Load the co-attention plugin library once per process (its creator registers itself at load, see
    engines/csrc/README.md), and check that TensorRT's registry then has the ``WeakCLIPCoAttention`` creator."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(
            f"tensorrt engine: the graph has the WeakCLIPCoAttention plugin node but the plugin library {path} is "
            f"missing; build it with\n    {PLUGIN_BUILD_COMMAND}\nor point ${PLUGIN_ENV} / plugin_library= at it"
        )
    resolved = str(path.resolve())
    if resolved not in _LOADED_PLUGINS:
        try:
            _LOADED_PLUGINS[resolved] = ctypes.CDLL(resolved, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise EngineError(f"tensorrt engine: cannot load the plugin library {path}: {e}") from None
    spec = plugin_spec()
    registry = trt.get_plugin_registry()
    creators = getattr(registry, "all_creators", None) or getattr(registry, "plugin_creator_list", [])
    ns = spec["plugin_namespace"]
    if not any(c.name == spec["op_type"] and getattr(c, "plugin_namespace", ns) == ns for c in creators):
        raise EngineError(
            f"tensorrt engine: {path} loaded but no {spec['op_type']} creator (namespace "
            f"{spec['plugin_namespace']!r}) is registered; was it built with -DWEAKCLIP_TRT_GET_CREATORS=ON?"
        )


# ----------------------------------------------------------------------------------------------------------------
# Profile, cache key, build (pure functions of their arguments; testable with the TensorRT-RTX AOT builder on CPU).


def make_profile(
    crop_size: int,
    *,
    max_batch: int = 8,
    min_size: int = 64,
    opt_size: int | None = None,
    size_divisor: int = 16,
) -> dict[str, tuple[int, int, int, int]]:
    """{"min", "opt", "max"} shapes of the ``image`` input: batch 1..max_batch, H, W min_size..crop_size."""
    opt_size = crop_size if opt_size is None else int(opt_size)
    if max_batch < 1:
        raise EngineError(f"tensorrt engine: max_batch must be >= 1, got {max_batch}")
    for name, v in (("min_size", min_size), ("opt_size", opt_size), ("crop_size", crop_size)):
        if v <= 0 or v % size_divisor:
            raise EngineError(f"tensorrt engine: {name} {v} is not a positive multiple of {size_divisor}")
    if not min_size <= opt_size <= crop_size:
        raise EngineError(f"tensorrt engine: need min_size {min_size} <= opt_size {opt_size} <= crop {crop_size}")
    return {
        "min": (1, 3, min_size, min_size),
        "opt": (max_batch, 3, opt_size, opt_size),
        "max": (max_batch, 3, crop_size, crop_size),
    }


def cache_key(
    onnx_digest: str,
    *,
    trt_version: str,
    gpu: Sequence[Any],
    precision: str,
    profile: Mapping[str, Sequence[int]],
    strongly_typed: bool,
    plugin_digest: str | None = None,
    workspace_gb: float = 4,
) -> tuple[str, dict[str, Any]]:
    """(key, material): the key is the sha256 of the canonical JSON of everything that determines the engine.

    ``onnx_digest``: :func:`weakclip.data.io.file_sha256` of the graph actually parsed (with its ``.data`` file);
    ``trt_version``: :func:`trt_identity`; ``gpu``: (device name, (major, minor) compute capability);
    ``plugin_digest``: sha256 of the plugin library or None when the graph has no plugin node.
    """
    name, cc = gpu
    material = {
        "format": CACHE_FORMAT,
        "onnx_sha256": onnx_digest,
        "tensorrt": trt_version,
        "gpu": {"name": str(name), "compute_capability": [int(c) for c in cc]},
        "precision": precision,
        "tf32": precision != "fp32",  # fp32 engines are built with BuilderFlag.TF32 cleared
        "strongly_typed": bool(strongly_typed),
        "profile": {k: [int(d) for d in profile[k]] for k in ("min", "opt", "max")},
        "plugin_sha256": plugin_digest,
        "workspace_gb": float(workspace_gb),
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest(), material


def _parser_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        out.append(f"{e.code()}: {e.desc()} (node {node!r}, op {op!r})")
    return out


def build_serialized(
    onnx_path: str | os.PathLike,
    trt_module: Any,
    precision: str,
    profile: Mapping[str, Sequence[int]],
    plugin_library: str | os.PathLike | None = None,
    *,
    workspace_gb: float = 4,
) -> bytes:
    """Parse ``onnx_path`` with ``trt_module``'s ONNX parser and build a serialized engine (bytes).

    Weakly typed TensorRT (10): the network is built from whatever graph is given, fp16 via ``BuilderFlag.FP16``.
    Strongly typed TensorRT (>= 11, RTX): the graph's own types decide, so ``precision`` must equal the graph's
    metadata ``precision`` (fp16 → the ``_fp16.onnx`` export).  No GPU is touched here beyond what ``trt_module``'s
    builder needs (TensorRT-RTX builds ahead of time on CPU).
    """
    trt = trt_module
    if precision not in PRECISIONS:
        raise PrecisionError(f"tensorrt engine: precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path = Path(onnx_path)
    strong = strongly_typed_only(trt)
    if strong:
        graph_precision = read_onnx_metadata(onnx_path, who="tensorrt engine").get("precision", "fp32")
        if graph_precision != precision:
            raise EngineError(
                f"tensorrt engine: {trt_identity(trt)} builds strongly typed networks only, so the precision is "
                f"the graph's: {onnx_path.name} is {graph_precision}, {precision} was asked for (give the "
                f"weakclip-export --fp16 graph <stem>_fp16.onnx for fp16)"
            )
    if plugin_library is not None:
        load_plugin_library(trt, plugin_library)

    logger = get_logger(trt)
    mark = logger.count
    builder = trt.Builder(logger)
    flags = 0
    if strong and hasattr(trt, "NetworkDefinitionCreationFlag") and not is_tensorrt_rtx(trt):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # RTX networks are strongly typed anyway
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(_parser_errors(parser))
        hint = ""
        if "Plugin not found" in errors and plugin_library is None:
            hint = "\n(the graph has a plugin node: pass plugin_library=, see engines/csrc/README.md)"
        raise EngineError(f"tensorrt engine: cannot parse {onnx_path}:\n{errors}\n{logger.text(since=mark)}{hint}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
        raise EngineError(
            f"tensorrt engine: {onnx_path.name} has inputs {inputs}, outputs {outputs}; expected image → logits"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    configure_precision(trt, config, precision, strong)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, tuple(profile["min"]), tuple(profile["opt"]), tuple(profile["max"]))
    if not opt_profile:
        raise EngineError(f"tensorrt engine: inconsistent optimisation profile {dict(profile)}")
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"tensorrt engine: building {onnx_path.name} failed:\n{logger.text(since=mark)}")
    blob = bytes(plan)
    if not blob:
        raise EngineError(
            f"tensorrt engine: building {onnx_path.name} gave an empty engine:\n{logger.text(since=mark)}"
        )
    return blob


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        with open(sidecar_path(engine_path), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_build(
    engine_path: str | os.PathLike,
    key: str,
    material: Mapping[str, Any],
    build: Callable[[], bytes],
    *,
    metadata: Mapping[str, str] | None = None,
) -> tuple[bytes, bool]:
    """(engine bytes, rebuilt): the cached engine when its sidecar has ``key`` and the engine's recorded sha256,
    else ``build()`` written atomically (engine first, then the sidecar, so a crash in between leaves a sidecar
    whose sha256 does not match and the next call rebuilds)."""
    engine_path = Path(engine_path)
    side = read_sidecar(engine_path)
    if side is not None and side.get("key") == key and engine_path.is_file():
        blob = engine_path.read_bytes()
        if blob and hashlib.sha256(blob).hexdigest() == side.get("engine_sha256"):
            return blob, False
    blob = build()
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(blob)
    record = {
        "key": key,
        "material": dict(material),
        "engine_sha256": hashlib.sha256(blob).hexdigest(),
        "engine_bytes": len(blob),
        "metadata": dict(metadata or {}),
    }
    with atomic_path(sidecar_path(engine_path)) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    return blob, True


# ----------------------------------------------------------------------------------------------------------------
# From a model file to engine bytes (what the runner calls).


@dataclass
class Plan:
    """A serialized engine and what the runner needs to deserialize and describe it."""

    blob: bytes
    engine_path: Path
    key: str | None  # the cache key (None: a built engine whose sidecar has none)
    onnx_path: Path | None  # the graph built (None: a built engine was given)
    metadata: dict[str, str]  # WeakCLIP metadata of the graph
    profile: Mapping[str, Sequence[int]]
    plugin: Path | None  # the plugin library to load before deserialising (None: no plugin node)
    rebuilt: bool


def check_model_path(model_path: str | os.PathLike | None, precision: str) -> Path:
    """The model file as a Path, after the checks that need neither TensorRT nor a GPU."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"tensorrt engine: precision must be one of {PRECISIONS}, got {precision!r}")
    if model_path is None:
        raise EngineError("tensorrt engine: give the exported weakclip.onnx or a built .engine (--model)")
    path = Path(model_path)
    if not path.is_file():
        raise EngineError(f"tensorrt engine: model {path} not found")
    return path


def graph_for(path: Path, meta: Mapping[str, str], precision: str, strong: bool) -> Path:
    """The ONNX file to build: strongly typed TensorRT needs the graph of the requested precision."""
    have = meta.get("precision", "fp32")
    if have == precision or (not strong and precision == "fp16"):
        return path
    if precision == "fp16":  # strongly typed: the fp16 export next to the fp32 graph
        sibling = path.with_name(f"{path.stem}_fp16.onnx")
        if not sibling.is_file():
            raise EngineError(
                f"tensorrt engine: this TensorRT builds strongly typed networks only; fp16 needs {sibling.name} "
                f"next to {path.name} (weakclip-export --fp16)"
            )
        return sibling
    raise EngineError(f"tensorrt engine: {path.name} is an {have} graph, fp32 was asked for; give the fp32 graph")


def resolve_plan(
    path: Path,
    trt: Any,
    gpu: Sequence[Any],
    *,
    precision: str,
    cache_dir: str | os.PathLike | None,
    plugin_library: str | os.PathLike | None,
    max_batch: int,
    min_size: int,
    opt_size: int | None,
    workspace_gb: float,
) -> Plan:
    """The engine for model ``path`` on ``gpu`` = (name, (major, minor)): a built engine checked against its sidecar,
    or the graph's cached engine (built when missing or stale)."""
    plugin = Path(plugin_library) if plugin_library else default_plugin_library()
    if path.suffix in ENGINE_SUFFIXES:
        return _built_engine(path, trt, gpu, precision, plugin)
    meta = read_onnx_metadata(path, who="tensorrt engine")
    if "class_names" not in meta or "crop_size" not in meta:
        raise EngineError(f"tensorrt engine: {path} has no WeakCLIP metadata; export it with weakclip-export")
    kind = meta.get("graph", "")
    if kind not in GRAPH_KINDS:
        raise EngineError(
            f"tensorrt engine: {path.name} has graph kind {kind!r}; give weakclip.onnx or weakclip_custom.onnx"
        )
    onnx_file = graph_for(path, meta, precision, strongly_typed_only(trt))
    if onnx_file != path:
        meta = read_onnx_metadata(onnx_file, who="tensorrt engine")
    profile = make_profile(
        int(meta["crop_size"]),
        max_batch=max_batch,
        min_size=min_size,
        opt_size=opt_size,
        size_divisor=int(meta.get("size_divisor", 16)),
    )
    needs_plugin = meta.get("graph") in CUSTOM_KINDS
    if needs_plugin and not plugin.is_file():
        load_plugin_library(trt, plugin)  # raises with the build command
    key, material = cache_key(
        file_sha256(onnx_file),
        trt_version=trt_identity(trt),
        gpu=gpu,
        precision=precision,
        profile=profile,
        strongly_typed=strongly_typed_only(trt),
        plugin_digest=file_sha256(plugin, with_data=False) if needs_plugin else None,
        workspace_gb=workspace_gb,
    )
    cdir = Path(cache_dir) if cache_dir is not None else onnx_file.parent / "trt_cache"
    engine_path = cdir / f"{onnx_file.stem}.{precision}.engine"
    plugin_used = plugin if needs_plugin else None

    def build() -> bytes:
        return build_serialized(onnx_file, trt, precision, profile, plugin_used, workspace_gb=workspace_gb)

    blob, rebuilt = cached_build(engine_path, key, material, build, metadata=meta)
    return Plan(blob, engine_path, key, onnx_file, dict(meta), profile, plugin_used, rebuilt)


def _built_engine(path: Path, trt: Any, gpu: Sequence[Any], precision: str, plugin: Path) -> Plan:
    """A built engine: usable only when its sidecar matches this TensorRT, GPU, precision and plugin library."""
    side = read_sidecar(path)
    if side is None or "material" not in side:
        raise EngineError(f"tensorrt engine: {path} has no readable sidecar {sidecar_path(path).name}")
    mat, meta = side["material"], side.get("metadata", {})
    problems = []
    if mat.get("tensorrt") != trt_identity(trt):
        problems.append(f"built with {mat.get('tensorrt')}, running {trt_identity(trt)}")
    if mat.get("gpu") != {"name": gpu[0], "compute_capability": list(gpu[1])}:
        problems.append(f"built for {mat.get('gpu')}, running on {tuple(gpu)}")
    if mat.get("precision") != precision:
        problems.append(f"engine is {mat.get('precision')}, {precision} was asked for")
    if "class_names" not in meta or "crop_size" not in meta:
        problems.append("its sidecar has no WeakCLIP metadata")
    needs_plugin = mat.get("plugin_sha256") is not None
    if needs_plugin and (not plugin.is_file() or file_sha256(plugin, with_data=False) != mat.get("plugin_sha256")):
        problems.append(f"the plugin library {plugin} is missing or not the one the engine was built with")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != side.get("engine_sha256"):
        problems.append("engine file does not match the sha256 in its sidecar")
    if problems:
        raise EngineError(
            f"tensorrt engine: {path} cannot be used: {'; '.join(problems)}; rebuild from the ONNX (give the .onnx "
            f"file instead)"
        )
    profile = {k: tuple(v) for k, v in mat["profile"].items()}
    return Plan(blob, path, side.get("key"), None, dict(meta), profile, plugin if needs_plugin else None, False)
