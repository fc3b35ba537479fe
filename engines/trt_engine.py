"""The TensorRT engine: runs the engine :mod:`weakclip.engines.trt_build` builds (or a built ``.engine``) on a CUDA
GPU with TensorRT's tensor API on a torch stream.  Windows go through a reused pinned host buffer, device buffers are
reused while the shape repeats, batches over ``max_batch`` run in chunks; every call synchronises before returning.
Not thread-safe: one engine per thread.
"""

from __future__ import annotations

import math
import os
from typing import Any, NoReturn

import torch

from weakclip.engines import trt_build as tb
from weakclip.engines.base import Engine, EngineError, engine_fields_from_metadata
from weakclip.engines.trt_build import INPUT_NAME, OUTPUT_NAME


def current_gpu(device: int) -> tuple[str, tuple[int, int]]:
    if not torch.cuda.is_available():
        raise EngineError("tensorrt engine: needs a CUDA GPU (torch.cuda.is_available() is False)")
    if device >= torch.cuda.device_count():
        raise EngineError(f"tensorrt engine: device {device} asked for, {torch.cuda.device_count()} GPU(s) visible")
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), (major, minor)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    names = ("float32", "float16", "int32", "bool", "int64", "bfloat16", "int8")
    table = {getattr(trt, n): getattr(torch, n) for n in names if hasattr(trt, n)}
    if dtype not in table:
        raise EngineError(f"tensorrt engine: unsupported I/O tensor type {dtype}")
    return table[dtype]


class TrtEngine(Engine):
    """WeakCLIP end-to-end graph on TensorRT (build options: :mod:`weakclip.engines.trt_build`)."""

    name = "tensorrt"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        precision: str = "fp32",
        cache_dir: str | os.PathLike | None = None,
        plugin_library: str | os.PathLike | None = None,
        max_batch: int = 8,
        min_size: int = 64,
        opt_size: int | None = None,
        workspace_gb: float = 4,
        device: int | str = 0,
        backend: str | None = None,
    ) -> None:
        trt = tb.import_tensorrt(backend)
        path = tb.check_model_path(model_path, precision)
        dev = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        if dev.type != "cuda":
            raise EngineError(f"tensorrt engine: device must be a CUDA device, got {device!r}")
        self.device = torch.device("cuda", dev.index or 0)
        self.gpu = current_gpu(self.device.index)
        if tb.is_tensorrt_rtx(trt):
            tb.check_rtx_gpu(trt, self.gpu)  # before any build: TensorRT-RTX has no SM90 target
        plan = tb.resolve_plan(
            path,
            trt,
            self.gpu,
            precision=precision,
            cache_dir=cache_dir,
            plugin_library=plugin_library,
            max_batch=int(max_batch),  # CLI options arrive as strings
            min_size=int(min_size),
            opt_size=None if opt_size is None else int(opt_size),
            workspace_gb=float(workspace_gb),
        )
        super().__init__(**engine_fields_from_metadata(plan.metadata))
        self.trt, self.model_path, self.precision = trt, path, precision
        self.onnx_path, self.engine_path = plan.onnx_path, plan.engine_path
        self.key, self.rebuilt = plan.key, plan.rebuilt
        self.metadata, self.profile = plan.metadata, plan.profile
        self.max_batch, self.min_size = int(plan.profile["max"][0]), int(plan.profile["min"][2])
        if plan.plugin is not None:
            tb.load_plugin_library(trt, plan.plugin)

        self._logger = tb.get_logger(trt)
        mark = self._logger.count
        with torch.cuda.device(self.device):
            self.runtime: Any = trt.Runtime(self._logger)
            self.engine: Any = self.runtime.deserialize_cuda_engine(plan.blob)
            if self.engine is None:
                self._fail(f"cannot deserialize {self.engine_path}", mark)
            self.context: Any = self.engine.create_execution_context()
            if self.context is None:
                self._fail("cannot create an execution context", mark)
            self.stream: torch.cuda.Stream | None = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        if self._inputs != [INPUT_NAME] or OUTPUT_NAME not in self._outputs:
            raise EngineError(f"tensorrt engine: engine I/O {self._inputs} → {self._outputs}; expected image → logits")
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self._dev: dict[str, torch.Tensor] = {}  # device buffers of the last shape, per tensor
        self._host: dict[str, torch.Tensor] = {}  # pinned staging for the windows ("in") and the logits ("out")

    def _fail(self, what: str, mark: int) -> NoReturn:
        raise EngineError(f"tensorrt engine: {what}:\n{self._logger.text(since=mark)}")

    def _pinned(self, which: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 view of pinned host buffer ``which``, grown as needed."""
        n = math.prod(shape)
        buf = self._host.get(which)
        if buf is None or buf.numel() < n:
            buf = self._host[which] = torch.empty(n, dtype=torch.float32, pin_memory=True)
        return buf[:n].view(shape)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        buf = self._dev.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = self._dev[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
        return buf

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        host_in = self._pinned("in", shape)
        host_in.copy_(x)
        stream = self.stream
        assert stream is not None
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            d_in = self._buffer(INPUT_NAME, shape)
            d_in.copy_(host_in, non_blocking=True)  # casts on the device if the engine input is not fp32
            if not self.context.set_input_shape(INPUT_NAME, shape):
                raise EngineError(f"tensorrt engine: input shape {shape} is outside the profile {self.profile}")
            self.context.set_tensor_address(INPUT_NAME, d_in.data_ptr())
            for name in self._outputs:
                out_shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in out_shape):
                    raise EngineError(f"tensorrt engine: output {name} has unresolved shape {out_shape}")
                self.context.set_tensor_address(name, self._buffer(name, out_shape).data_ptr())
            mark = self._logger.count
            if not self.context.execute_async_v3(stream.cuda_stream):
                self._fail("execute_async_v3 failed", mark)
            d_out = self._dev[OUTPUT_NAME].float()  # a no-op for fp32 logits
            host_out = self._pinned("out", tuple(d_out.shape))
            host_out.copy_(d_out, non_blocking=True)
        stream.synchronize()  # the host buffers are reused: finish before returning / the next copy
        return host_out.clone()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.context is None:
            raise EngineError("tensorrt engine: used after close()")
        self.check_windows(windows)
        h, w = windows.shape[-2:]
        if not (self.min_size <= h <= self.crop_size and self.min_size <= w <= self.crop_size):
            raise ValueError(f"tensorrt engine: window {h}×{w} outside the profile {self.min_size}..{self.crop_size}")
        x = windows.detach().cpu().contiguous()
        chunks = [self._run(x[i : i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": str(self.model_path),
            "onnx": str(self.onnx_path) if self.onnx_path else None,
            "engine_file": str(self.engine_path),
            "cache_key": self.key,
            "rebuilt": self.rebuilt,
            "precision": self.precision,
            "tensorrt": tb.trt_identity(self.trt),
            "gpu": {"name": self.gpu[0], "compute_capability": list(self.gpu[1])},
            "profile": {k: list(v) for k, v in self.profile.items()},
        }

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.synchronize()
        self.context = self.engine = self.runtime = self.stream = None
        self._dev, self._host = {}, {}
