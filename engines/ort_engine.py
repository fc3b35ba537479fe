"""The ONNX Runtime engine: the end-to-end graph written by ``weakclip-export`` (``weakclip.onnx``), CPU by default.

Class names, normalisation, crop, precision and graph kind come from the model's metadata.  A CUDA session that came
up on the CPU only (ORT falls back silently) raises.  ``optimized_model_cache`` (a folder) keeps the optimised graph,
keyed by model hash, ORT version, level and provider.  Logits are written by ORT into a torch tensor we allocate (I/O
binding); ``reuse_outputs=True`` reuses it while the input shape repeats (valid until the next call).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakclip.data.io import file_sha256
from weakclip.engines.base import Engine, EngineError, PrecisionError, engine_fields_from_metadata, usable_cores

GRAPH_KINDS = ("end_to_end",)  # runnable here; the custom-op graphs need the TensorRT plugin
_LEVELS = {"disable": "DISABLE_ALL", "basic": "ENABLE_BASIC", "extended": "ENABLE_EXTENDED", "all": "ENABLE_ALL"}
# ORT's CPU NCHWc layout pass crashes on our fp16 graphs (see export/fp16.py); disabled for fp16 models on CPU.
_CPU_FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineError("onnxruntime engine: pip install onnxruntime (or onnxruntime-gpu for CUDA)") from None
    return ort


def select_providers(device: str | torch.device, available: list[str]) -> list[Any]:
    """ORT provider list for ``device`` ("cpu", "cuda", "cuda:N", "auto") given the available providers."""
    dev = str(device)
    if dev == "auto":
        dev = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    if dev.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise EngineError(
                f"onnxruntime engine: device {dev!r} needs the CUDA execution provider, which this onnxruntime "
                f"build does not have (available: {available}); install onnxruntime-gpu or use device='cpu'"
            )
        # HEURISTIC: window sizes vary, and the default EXHAUSTIVE search benchmarks every conv at each new shape.
        opts = {"device_id": int(dev.split(":", 1)[1]) if ":" in dev else 0, "cudnn_conv_algo_search": "HEURISTIC"}
        return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
    raise EngineError(f"onnxruntime engine: unknown device {dev!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'")


def check_session_providers(session: Any, requested: list[Any]) -> list[str]:
    """The session's providers; EngineError when a requested non-CPU provider did not start (ORT then builds a
    CPU-only session and only logs a warning, which severity 3 hides)."""
    active = list(session.get_providers())
    wanted = [p[0] if isinstance(p, tuple) else p for p in requested]
    missing = [p for p in wanted if p != "CPUExecutionProvider" and p not in active]
    if missing:
        raise EngineError(
            f"onnxruntime engine: {', '.join(missing)} was requested but the session started with {active} only "
            f"(ONNX Runtime falls back to the CPU when a provider fails to initialise: check that the CUDA and cuDNN "
            f"libraries this onnxruntime-gpu was built for are installed and on the library path, and that the "
            f"driver supports them); use device='cpu' to run on the CPU deliberately"
        )
    return active


def read_onnx_metadata(path: str | os.PathLike, *, who: str = "onnxruntime engine") -> dict[str, str]:
    """``metadata_props`` of an .onnx file, without the onnx package: walks the ModelProto's top-level protobuf
    fields and seeks past all but ``metadata_props`` (field 14), so a 500 MB model costs a few reads.  ``who`` starts
    the EngineError message of an unreadable file."""
    import io

    def varint(f: Any) -> int | None:
        shift = value = 0
        while True:
            b = f.read(1)
            if not b:
                return None
            value |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                return value
            shift += 7

    meta: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            while (tag := varint(f)) is not None:
                field, wire = tag >> 3, tag & 7
                if wire == 0:
                    varint(f)
                elif wire in (1, 5):  # fixed64, fixed32
                    f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                elif wire == 2:
                    n = varint(f)
                    if n is None:
                        raise ValueError("truncated field")
                    if field == 14:  # StringStringEntryProto: 1 key, 2 value (both strings)
                        entry, kv = io.BytesIO(f.read(n)), {}
                        while (t := varint(entry)) is not None:
                            m = varint(entry) or 0
                            kv[t >> 3] = entry.read(m).decode("utf-8")
                        meta[kv.get(1, "")] = kv.get(2, "")
                    else:
                        f.seek(n, os.SEEK_CUR)
                else:
                    raise ValueError(f"unexpected protobuf wire type {wire}")
    except (OSError, ValueError) as e:
        raise EngineError(f"{who}: cannot read {path}: {e}") from None
    return meta


def check_file_precision(name: str, model_precision: str, asked: str | None) -> None:
    """PrecisionError unless the file's metadata precision (fp32, fp16, int8*) is the ``asked`` one (None: any),
    saying which file gives that tier."""
    if asked is None or asked == model_precision or (asked == "int8" and model_precision.startswith("int8")):
        return
    how = {
        "fp16": "export with --fp16 and pass weakclip_fp16.onnx",
        "int8": "export with --int8 IMAGES and pass weakclip_int8.onnx",
        "fp32": "pass the fp32 weakclip.onnx",
        "bf16": "ONNX Runtime has no bf16 CPU tier; use --engine torch --precision bf16, which needs avx512_bf16 or "
        "amx_bf16",
    }.get(asked, "")
    raise PrecisionError(
        f"onnxruntime engine: precision is a property of the .onnx file: {name} is {model_precision}, "
        f"{asked} was asked for" + (f" ({how})" if how else "")
    )


class OrtEngine(Engine):
    """WeakCLIP end-to-end ONNX graph on ONNX Runtime.  Not thread-safe: one engine per thread."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        precision: str | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        graph_optimization: str = "all",
        optimized_model_cache: str | os.PathLike | None = None,
        io_binding: bool = True,
        reuse_outputs: bool = False,
    ) -> None:
        ort = _import_ort()
        if model_path is None:
            raise EngineError("onnxruntime engine: give the exported weakclip.onnx (--model)")
        path = Path(model_path)
        if not path.is_file():
            raise EngineError(f"onnxruntime engine: model {path} not found")
        if graph_optimization not in _LEVELS:
            raise EngineError(f"onnxruntime engine: graph_optimization must be one of {tuple(_LEVELS)}")
        providers = select_providers(device, ort.get_available_providers())
        on_cpu = providers == ["CPUExecutionProvider"]

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = int(intra_op_threads or usable_cores())
        so.inter_op_num_threads = int(inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, "ORT_" + _LEVELS[graph_optimization])

        meta = read_onnx_metadata(path)
        if "class_names" not in meta or "crop_size" not in meta:
            raise EngineError(f"onnxruntime engine: {path} has no WeakCLIP metadata; export it with weakclip-export")
        kind = meta.get("graph", "")
        if kind not in GRAPH_KINDS:
            hint = " (it contains the TensorRT plugin node; use the tensorrt engine)" if "custom" in kind else ""
            raise EngineError(
                f"onnxruntime engine: {path.name} has graph kind {kind!r}{hint}; give the end-to-end weakclip.onnx"
            )
        model_precision = meta.get("precision", "fp32")
        check_file_precision(path.name, model_precision, precision)
        fp16_cpu = on_cpu and model_precision == "fp16"
        kw = {"disabled_optimizers": list(_CPU_FP16_DISABLED_OPTIMIZERS)} if fp16_cpu else {}

        load_path = path
        self.cache_file: Path | None = None
        if optimized_model_cache is not None and graph_optimization != "disable":
            cache = Path(optimized_model_cache)
            cache.mkdir(parents=True, exist_ok=True)
            key = f"{file_sha256(path)[:16]}.ort{ort.__version__}.{graph_optimization}.{'cpu' if on_cpu else 'cuda'}"
            self.cache_file = cache / f"{path.stem}.{key}.onnx"
            if self.cache_file.exists():
                load_path = self.cache_file
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
            else:
                so.optimized_model_filepath = str(self.cache_file)
        try:
            self.session: Any = ort.InferenceSession(str(load_path), so, providers=providers, **kw)
        except Exception as e:  # noqa: BLE001 - ORT's own exception types; one clear line
            raise EngineError(f"onnxruntime engine: cannot load {load_path}: {str(e).splitlines()[0]}") from None
        try:
            active = check_session_providers(self.session, providers)
        except EngineError:
            if self.cache_file is not None and load_path != self.cache_file:  # optimised for the wrong provider
                self.cache_file.unlink(missing_ok=True)
            self.session = None
            raise

        super().__init__(**engine_fields_from_metadata(meta))
        self.model_path, self.metadata, self.precision, self.providers = path, meta, model_precision, active
        self.intra_op_threads, self.inter_op_threads = so.intra_op_num_threads, so.inter_op_num_threads
        self.graph_optimization, self.io_binding, self.reuse_outputs = graph_optimization, io_binding, reuse_outputs
        self._device_type = "cpu"  # where the outputs are bound (host memory, whatever the provider)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != ["image"] or "logits" not in outputs:
            raise EngineError(
                f"onnxruntime engine: {path.name} has inputs {inputs}, outputs {outputs}; expected image → logits"
            )
        self._binding: Any = self.session.io_binding() if io_binding else None
        self._out_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._reused: torch.Tensor | None = None

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.session is None:
            raise EngineError("onnxruntime engine: used after close()")
        self.check_windows(windows)
        x = windows.detach().cpu().contiguous().numpy()  # (B, 3, H, W) float32, the caller's memory when on the CPU
        if self._binding is None:
            return torch.from_numpy(self.session.run(["logits"], {"image": x})[0])
        b = self._binding
        b.bind_cpu_input("image", x)
        key = tuple(x.shape)
        shape = self._out_shapes.get(key)
        if shape is None:  # first time at this input shape: let ORT allocate, learn the shape
            b.bind_output("logits", self._device_type)
            self.session.run_with_iobinding(b)
            out = torch.from_numpy(b.copy_outputs_to_cpu()[0])
            self._out_shapes[key] = tuple(out.shape)
            return out
        reused = self._reused if self.reuse_outputs else None
        out = reused if reused is not None and tuple(reused.shape) == shape else torch.empty(shape, dtype=torch.float32)
        b.bind_output("logits", self._device_type, 0, np.float32, list(shape), out.data_ptr())
        self.session.run_with_iobinding(b)
        if self.reuse_outputs:
            self._reused = out
        return out

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": str(self.model_path),
            "precision": self.precision,
            "providers": list(self.providers),
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "graph_optimization": self.graph_optimization,
            "io_binding": self.io_binding,
            "onnxruntime": _import_ort().__version__,
            "opset": self.metadata.get("opset"),
            "exporter": self.metadata.get("exporter"),
        }

    def close(self) -> None:
        self.session = self._binding = self._reused = None
