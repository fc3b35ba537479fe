"""Building TensorRT engines from the exported end-to-end graphs, and the on-disk engine cache.

One optimisation profile per build (batch 1..max_batch, H, W min_size..crop).  TensorRT >= 11 and TensorRT-RTX build
strongly typed networks only, so their fp16 engine parses the ``<stem>_fp16.onnx`` export.  Cached engines are keyed by
everything that determines them (:func:`cache_key`); a missing, stale or corrupted one is rebuilt, never used.
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

from weakclip.data.io import atomic_path, file_sha256, write_text_atomic
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


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PrecisionError(f"tensorrt engine: precision must be one of {PRECISIONS}, got {precision!r}")


def import_tensorrt(backend: str | None = None) -> Any:
    """The TensorRT module for ``backend`` ("tensorrt" default, "tensorrt_rtx"); EngineError with the install hint."""
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


def is_tensorrt_rtx(trt: Any) -> bool:
    return trt.__name__.split(".")[0].startswith("tensorrt_rtx")


def strongly_typed_only(trt: Any) -> bool:
    """True for TensorRT >= 11 and TensorRT-RTX (no weakly typed networks, no BuilderFlag.FP16)."""
    major = int(str(trt.__version__).split(".")[0])
    return is_tensorrt_rtx(trt) or major >= 11 or not hasattr(trt.BuilderFlag, "FP16")


def trt_identity(trt: Any) -> str:
    return f"{trt.__name__.split('.')[0]}-{trt.__version__}"


@functools.cache
def get_logger(trt: Any) -> Any:
    """THE logger of module ``trt``, passed to every Builder, OnnxParser and Runtime: TensorRT keeps the first logger
    it is given process-wide, so a logger per engine would leave the second engine's error messages empty."""

    class Logger(trt.ILogger):
        """Keeps the last warnings and errors (numbered) so a failing parse, build or deserialisation can show them."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: collections.deque[tuple[int, str]] = collections.deque(maxlen=500)
            self.count = 0  # messages logged so far (a mark for text(since=...))

        def log(self, severity: Any, msg: str) -> None:
            S = trt.ILogger.Severity
            if severity in (S.INTERNAL_ERROR, S.ERROR, S.WARNING):
                self.messages.append((self.count, f"[{'WARNING' if severity == S.WARNING else severity.name}] {msg}"))
                self.count += 1

        def text(self, n: int = 20, since: int = 0) -> str:
            """The last ``n`` kept messages logged after mark ``since`` (a ``count`` read before the operation)."""
            kept = [m for i, m in self.messages if i >= since]
            return "\n".join(kept[-n:]) or "(no messages)"

    return Logger()


# TensorRT-RTX compute-capability targets when the module does not list them (its ComputeCapability enum does).
_RTX_KNOWN_TARGETS = ((7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1))


def rtx_targets(trt: Any) -> tuple[tuple[int, int], ...]:
    """Compute capabilities TensorRT-RTX module ``trt`` can build for (from ``trt.ComputeCapability.SM<nn>``)."""
    enum = getattr(trt, "ComputeCapability", None)
    names = [n for n in dir(enum) if re.fullmatch(r"SM\d{2,3}", n)] if enum is not None else []
    return tuple(sorted((int(n[2:-1]), int(n[-1])) for n in names)) if names else _RTX_KNOWN_TARGETS


def check_rtx_gpu(trt: Any, gpu: Sequence[Any]) -> None:
    """EngineError unless TensorRT-RTX has a target for ``gpu`` = (name, (major, minor)); it has none for
    SM90 (H100, H200) or SM100, and its engines cannot run there."""
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
    """Builder flags for ``precision``: fp32 clears ``BuilderFlag.TF32`` (on by default; it rounds matmul inputs to
    10-bit mantissas on Ampere+), fp16 sets ``BuilderFlag.FP16`` unless the network is strongly typed."""
    _check_precision(precision)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)


_LOADED_PLUGINS: dict[str, Any] = {}


def load_plugin_library(trt: Any, path: str | os.PathLike) -> None:
    """Load the co-attention plugin library once per process (its creator registers itself at load) and check that
    TensorRT's registry then has the ``WeakCLIPCoAttention`` creator."""
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
    """(key, material): the key is the sha256 of the canonical JSON of everything that determines the engine;
    ``plugin_digest`` is None when the graph has no plugin node."""
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


def build_serialized(
    onnx_path: str | os.PathLike,
    trt_module: Any,
    precision: str,
    profile: Mapping[str, Sequence[int]],
    plugin_library: str | os.PathLike | None = None,
    *,
    workspace_gb: float = 4,
) -> bytes:
    """Parse ``onnx_path`` with ``trt_module``'s ONNX parser and build a serialized engine.  Strongly typed
    TensorRT takes the graph's own types, so ``precision`` must then be the graph's metadata ``precision``."""
    trt = trt_module
    _check_precision(precision)
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
        errors = []
        for e in (parser.get_error(i) for i in range(parser.num_errors)):
            node, op = (getattr(e, a)() if hasattr(e, a) else "" for a in ("node_name", "node_operator"))
            errors.append(f"{e.code()}: {e.desc()} (node {node!r}, op {op!r})")
        text = "\n".join(errors)
        hint = "\n(the graph has a plugin node: pass plugin_library=, see engines/csrc/README.md)"
        hint = hint if "Plugin not found" in text and plugin_library is None else ""
        raise EngineError(f"tensorrt engine: cannot parse {onnx_path}:\n{text}\n{logger.text(since=mark)}{hint}")
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
    opt_profile.set_shape(INPUT_NAME, *(tuple(profile[k]) for k in ("min", "opt", "max")))
    if not opt_profile:
        raise EngineError(f"tensorrt engine: inconsistent optimisation profile {dict(profile)}")
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    blob = b"" if plan is None else bytes(plan)
    if not blob:
        what = "failed" if plan is None else "gave an empty engine"
        raise EngineError(f"tensorrt engine: building {onnx_path.name} {what}:\n{logger.text(since=mark)}")
    return blob


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(f"{engine_path}.json")


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
    write_text_atomic(sidecar_path(engine_path), json.dumps(record, indent=1, sort_keys=True))
    return blob, True


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
    _check_precision(precision)
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
    or the graph's cached engine (built when missing or stale).  The plugin library: ``plugin_library``, else
    ``$WEAKCLIP_TRT_PLUGIN``, else ``<repo>/build/libweakclip_trt_plugin.so``."""
    default_plugin = os.environ.get(PLUGIN_ENV) or REPO_ROOT / "build" / "libweakclip_trt_plugin.so"
    plugin = Path(plugin_library or default_plugin)
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
    strong = strongly_typed_only(trt)
    onnx_file = graph_for(path, meta, precision, strong)
    if onnx_file != path:
        meta = read_onnx_metadata(onnx_file, who="tensorrt engine")
    divisor = int(meta.get("size_divisor", 16))
    profile = make_profile(
        int(meta["crop_size"]), max_batch=max_batch, min_size=min_size, opt_size=opt_size, size_divisor=divisor
    )
    plugin_used = plugin if meta.get("graph") in CUSTOM_KINDS else None
    if plugin_used is not None and not plugin_used.is_file():
        load_plugin_library(trt, plugin_used)  # raises with the build command
    plugin_digest = file_sha256(plugin_used, with_data=False) if plugin_used is not None else None
    kw: dict[str, Any] = dict(
        gpu=gpu, precision=precision, profile=profile, strongly_typed=strong, workspace_gb=workspace_gb
    )
    key, material = cache_key(file_sha256(onnx_file), trt_version=trt_identity(trt), plugin_digest=plugin_digest, **kw)
    cdir = Path(cache_dir) if cache_dir is not None else onnx_file.parent / "trt_cache"
    engine_path = cdir / f"{onnx_file.stem}.{precision}.engine"

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
    needs_plugin = mat.get("plugin_sha256") is not None
    plugin_ok = not needs_plugin or (plugin.is_file() and file_sha256(plugin, with_data=False) == mat["plugin_sha256"])
    gpu_ok = mat.get("gpu") == {"name": gpu[0], "compute_capability": list(gpu[1])}
    blob = path.read_bytes()
    sha_ok = hashlib.sha256(blob).hexdigest() == side.get("engine_sha256")
    checks = (
        (mat.get("tensorrt") == trt_identity(trt), f"built with {mat.get('tensorrt')}, running {trt_identity(trt)}"),
        (gpu_ok, f"built for {mat.get('gpu')}, running on {tuple(gpu)}"),
        (mat.get("precision") == precision, f"engine is {mat.get('precision')}, {precision} was asked for"),
        ("class_names" in meta and "crop_size" in meta, "its sidecar has no WeakCLIP metadata"),
        (plugin_ok, f"the plugin library {plugin} is missing or not the one the engine was built with"),
        (sha_ok, "engine file does not match the sha256 in its sidecar"),
    )
    if problems := [msg for ok, msg in checks if not ok]:
        raise EngineError(
            f"tensorrt engine: {path} cannot be used: {'; '.join(problems)}; rebuild from the ONNX (give the .onnx "
            f"file instead)"
        )
    profile = {k: tuple(v) for k, v in mat["profile"].items()}
    return Plan(blob, path, side.get("key"), None, dict(meta), profile, plugin if needs_plugin else None, False)
