"""The PyTorch reference engine: a WeakCLIP checkpoint (or module) in eval mode under ``torch.inference_mode``.

Precisions: fp32 (the reference); fp16 (CUDA autocast, refused on CPU); bf16 (autocast on CPU or CUDA; on a CPU
without avx512_bf16 / amx_bf16 oneDNN emulates bf16, slower than fp32, so it is refused unless ``check_isa=False``).
``cast_weights`` (default on for bf16) stores the matmul weights in bf16 once: autocast would cast the same weights
before the same kernels on every call, and bf16 weights let ``nn.MultiheadAttention`` take torch's fused fast path
(logits then differ from plain autocast at bf16 rounding level).  int8 is a model file for the onnxruntime engine.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from weakclip.engines.base import Engine, EngineError, PrecisionError

PRECISIONS = ("fp32", "fp16", "bf16")
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Store the weights and biases of every Linear, Conv(Transpose) and MultiheadAttention input projection in
    ``dtype``, in place.  Only for autocast to ``dtype``, which casts them anyway."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    mha = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")  # out_proj: a Linear
    for m in model.modules():
        names = ("weight", "bias") if isinstance(m, kinds) else mha if isinstance(m, nn.MultiheadAttention) else ()
        for p in (getattr(m, name, None) for name in names):
            if isinstance(p, torch.Tensor) and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)


class TorchEngine(Engine):
    """``model``: a checkpoint path or an ``nn.Module`` with a WeakCLIPConfig ``config`` whose forward returns
    ``.logits`` (B, K, H/4, W/4) or the logits tensor.  ``cast_weights`` None: on for bf16, off for fp16."""

    name = "torch"

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        check_isa: bool = True,
        cast_weights: bool | None = None,
    ) -> None:
        device = torch.device(device)
        if precision == "int8":
            raise PrecisionError(
                "torch engine: int8 is a model file, not a torch precision: `weakclip export --int8 IMAGES` writes "
                "weakclip_int8.onnx; run it with --engine onnxruntime"
            )
        if precision not in PRECISIONS:
            raise PrecisionError(f"torch engine: precision must be one of {PRECISIONS}, got {precision!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("torch engine: device 'cuda' was asked for but torch.cuda.is_available() is False")
        if precision == "fp16" and device.type != "cuda":
            raise PrecisionError(f"torch engine: fp16 needs a CUDA device (got {device}); use precision='fp32' on CPU")
        if precision == "bf16" and device.type == "cpu" and check_isa:
            from weakclip.masks.cpu_features import missing_for

            why = missing_for("bf16")
            if why:
                raise PrecisionError(
                    f"torch engine: {why}; use fp32 (--precision fp32), or check_isa=False (--engine-opt "
                    "check_isa=false) to run bf16 emulated, slower than fp32"
                )
        if precision == "bf16" and device.type == "cuda" and check_isa and not torch.cuda.is_bf16_supported():
            raise PrecisionError(f"torch engine: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
        if model is None:
            raise EngineError("torch engine: give a checkpoint path (--model) or a model")
        if isinstance(model, nn.Module):
            module: Any = model
        else:
            from weakclip import load_checkpoint

            if not os.path.exists(model):
                raise EngineError(f"torch engine: checkpoint {model} not found")
            module = load_checkpoint(model)
        cfg: Any = module.config
        fields = {k: getattr(cfg, k) for k in ("class_names", "crop_size", "mean", "std")}
        super().__init__(**fields, size_divisor=getattr(cfg, "patch_size", 16))
        self.device, self.precision, self.channels_last = device, precision, channels_last
        module = module.eval().to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.model: nn.Module | None = module
        # Text side precomputed once, like the exported graphs: T (K, E), fp32 (before any weight cast).
        self.text: torch.Tensor | None = None
        if hasattr(module, "text_embeddings"):
            with torch.inference_mode():
                self.text = module.text_embeddings()
        dt = self.autocast_dtype = _AUTOCAST_DTYPES.get(precision)
        self.cast_weights = bool(precision == "bf16" if cast_weights is None else cast_weights)
        if self.cast_weights:
            if dt is None:
                raise PrecisionError("torch engine: cast_weights needs precision 'bf16' or 'fp16'")
            if isinstance(model, nn.Module):  # never change the caller's model
                import copy

                module = self.model = copy.deepcopy(module)
            cast_matmul_weights(module, dt)

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise EngineError("torch engine: used after close()")
        self.check_windows(windows)
        x = windows.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dt = self.autocast_dtype
        autocast = torch.autocast(self.device.type, dtype=dt) if dt is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            out = self.model(x) if self.text is None else self.model(x, text_embeddings=self.text)
        logits = getattr(out, "logits", out)  # (B, K, H/4, W/4)
        return logits.float().to(windows.device)

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "device": str(self.device), "precision": self.precision}
        if self.autocast_dtype is not None:
            d["cast_weights"] = self.cast_weights
        return d

    def close(self) -> None:
        self.model = self.text = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
