"""OpenVINO engine (CPU): the exported end-to-end graph (``weakclip.onnx``, read directly) or an int8 OpenVINO IR made
by NNCF post-training quantisation (:func:`quantize_nncf`), behind the same :class:`~weakclip.engines.base.Engine`
interface as the other engines.

Status: **evaluated, not registered**.  It is registered as engine ``"openvino"`` (``engines/base.py`` ``_BUILTIN``)
and offered as an optional extra only if it beats the best shipped engine of the same precision tier by ≥ 1.2× in
``benchmarks/bench_cpu_engines.py`` (the benchmark prints that decision from its own numbers).  Until then use it as
``get_engine("weakclip.engines.openvino_engine:OpenVINOEngine", "weakclip.onnx")`` (the registry's module:Factory
form; ``weakclip generate --engine weakclip.engines.openvino_engine:OpenVINOEngine`` likewise).  Needs
``pip install openvino`` (and ``nncf`` for :func:`quantize_nncf`).

* ``precision``: None (default) leaves OpenVINO's own choice — on a CPU with avx512_bf16 / amx_bf16 that is **bf16**
  inference on an fp32 model, elsewhere fp32; "fp32" forces fp32 (``INFERENCE_PRECISION_HINT=f32``); "bf16" asks for
  bf16 and is refused (one line naming the missing instruction set) on a CPU without it, unless ``check_isa=False``
  (OpenVINO then silently runs fp32: :attr:`inference_precision` says what actually ran).  An int8 IR carries its own
  precision (the file is the tier, as with ONNX Runtime's ``weakclip_int8.onnx``); its non-quantised ops follow the
  same rule as above.
* ``threads`` (``INFERENCE_NUM_THREADS``; default: the cores this process may use), ``performance_hint`` ("LATENCY":
  one stream, the whole CPU per call, as the other engines run), ``cache_dir`` (OpenVINO's compiled-model cache).
* Shapes: the graph's batch, H and W stay dynamic, as exported.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakclip.engines.base import Engine, EngineError, PrecisionError, engine_fields_from_metadata
from weakclip.engines.ort_engine import read_onnx_metadata, usable_cores

PRECISIONS = (None, "fp32", "bf16")
_HINT = {"fp32": "f32", "bf16": "bf16"}
_META_KEYS = ("class_names", "crop_size", "mean", "std", "size_divisor", "precision", "graph", "opset", "exporter")


def _import_ov() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise EngineError("openvino engine: pip install openvino") from None
    return ov


def read_metadata(path: Path, model: Any) -> dict[str, str]:
    """WeakCLIP metadata: ONNX ``metadata_props`` (.onnx) or the IR's ``rt_info['weakclip']`` (.xml from
    :func:`quantize_nncf`)."""
    if path.suffix.lower() == ".onnx":
        return read_onnx_metadata(path)
    meta = {}
    for key in _META_KEYS:
        if model.has_rt_info(["weakclip", key]):
            meta[key] = model.get_rt_info(["weakclip", key]).astype(str)
    return meta


class OpenVINOEngine(Engine):
    """WeakCLIP end-to-end graph on OpenVINO's CPU plugin (see the module docstring for the options)."""

    name = "openvino"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str = "CPU",
        precision: str | None = None,
        threads: int | None = None,
        performance_hint: str = "LATENCY",
        cache_dir: str | os.PathLike | None = None,
        check_isa: bool = True,
    ) -> None:
        ov = _import_ov()
        if model_path is None:
            raise EngineError("openvino engine: give the exported weakclip.onnx or an int8 IR (.xml)")
        path = Path(model_path)
        if not path.is_file():
            raise EngineError(f"openvino engine: model {path} not found")
        if precision not in PRECISIONS:
            raise PrecisionError(f"openvino engine: precision must be one of {PRECISIONS}, got {precision!r}")
        if str(device).upper() != "CPU":
            raise EngineError(f"openvino engine: only device 'CPU' is supported here, got {device!r}")
        if precision == "bf16" and check_isa:
            from weakclip.cpu_features import missing_for

            why = missing_for("bf16")
            if why:
                raise PrecisionError(f"openvino engine: {why}; use precision='fp32' (or None)")
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        try:
            model = core.read_model(str(path))
        except Exception as e:  # noqa: BLE001 - OpenVINO's own exception types; one clear line
            raise EngineError(f"openvino engine: cannot read {path}: {str(e).splitlines()[0]}") from None
        meta = read_metadata(path, model)
        if "class_names" not in meta or "crop_size" not in meta:
            raise EngineError(f"openvino engine: {path} has no WeakCLIP metadata; export it with weakclip-export")
        if meta.get("graph", "end_to_end") != "end_to_end":
            raise EngineError(f"openvino engine: {path.name} has graph kind {meta['graph']!r}; give weakclip.onnx")
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": int(threads or usable_cores()),
            "PERFORMANCE_HINT": performance_hint,
        }
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = _HINT[precision]
        t0 = time.perf_counter()
        try:
            self.compiled: Any = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise EngineError(f"openvino engine: cannot compile {path.name}: {str(e).splitlines()[0]}") from None
        self.compile_s = time.perf_counter() - t0
        names = [o.get_any_name() for o in self.compiled.outputs]
        if "logits" not in names or [i.get_any_name() for i in self.compiled.inputs] != ["image"]:
            raise EngineError(f"openvino engine: {path.name} must map image → logits (outputs: {names})")
        super().__init__(**engine_fields_from_metadata(meta))
        self.model_path = path
        self.metadata = meta
        self.precision = precision
        self.model_precision = meta.get("precision", "fp32")
        self.threads = config["INFERENCE_NUM_THREADS"]
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin really runs (an ov.Type)
        name = getattr(hint, "type_name", None) or str(hint)  # "f32", "bf16", "f16"
        self.inference_precision = {"f32": "fp32", "f16": "fp16"}.get(name, name)
        self._out_index = names.index("logits")
        self.request: Any = self.compiled.create_infer_request()
        self._ov_version = ov.__version__ if hasattr(ov, "__version__") else ov.get_version()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.request is None:
            raise EngineError("openvino engine: used after close()")
        self.check_windows(windows)
        x = windows.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        self.request.infer({0: x.contiguous().numpy()})
        out = self.request.get_output_tensor(self._out_index).data  # a view of OpenVINO's buffer, reused per call
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": str(self.model_path),
            "precision": self.precision or "openvino default",
            "model_precision": self.model_precision,
            "inference_precision": self.inference_precision,
            "threads": self.threads,
            "openvino": self._ov_version,
        }

    def close(self) -> None:
        self.request = None
        self.compiled = None


def quantize_nncf(src: str | os.PathLike, dst: str | os.PathLike, calibration: Sequence[np.ndarray]) -> dict[str, Any]:
    """int8 OpenVINO IR ``dst`` (.xml + .bin) from the fp32 ``weakclip.onnx`` ``src`` by NNCF post-training
    quantisation (``nncf.quantize``, transformer model type: SmoothQuant + per-channel int8 weights, int8
    activations; calibrated on ``calibration``, each (1, 3, H, W) float32 normalised like the model input).  The
    WeakCLIP metadata goes into the IR's ``rt_info['weakclip']`` with precision ``int8-nncf``."""
    ov = _import_ov()
    try:
        import nncf
    except ImportError:
        raise EngineError("openvino int8: pip install nncf") from None
    src, dst = Path(src), Path(dst)
    if not calibration:
        raise ValueError("NNCF quantisation needs at least one calibration window")
    t0 = time.perf_counter()
    model = ov.Core().read_model(str(src))
    meta = read_metadata(src, model)
    q = nncf.quantize(model, nncf.Dataset(list(calibration)), model_type=nncf.ModelType.TRANSFORMER,
                      subset_size=len(calibration))  # fmt: skip
    for k, v in {**meta, "precision": "int8-nncf"}.items():
        q.set_rt_info(str(v), ["weakclip", k])
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(dst), compress_to_fp16=False)
    n_fq = sum(1 for op in q.get_ops() if op.get_type_name() == "FakeQuantize")
    return {"seconds": round(time.perf_counter() - t0, 1), "fake_quantize_nodes": n_fq,
            "calibration_windows": len(calibration), "nncf": nncf.__version__,
            "mb": round(sum(p.stat().st_size for p in (dst, dst.with_suffix(".bin")) if p.exists()) / 2**20, 2),
            "metadata": json.dumps(sorted(meta))}  # fmt: skip
