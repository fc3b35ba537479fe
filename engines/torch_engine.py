"""The PyTorch reference engine: a WeakCLIP checkpoint (or module) in eval mode under ``torch.inference_mode``.

Precision (``precision``):

* ``fp32`` (default): the reference.
* ``fp16``: CUDA autocast; refused on CPU.
* ``bf16``: autocast to bfloat16 (CPU or CUDA; LayerNorm, softmax and the other ops outside autocast's
  lower-precision list stay fp32).  On a CPU it needs native bf16 arithmetic (avx512_bf16 or amx_bf16, see
  :mod:`weakclip.masks.cpu_features`): without it oneDNN emulates bf16 and runs slower than fp32, so the engine refuses with
  one line naming the missing instruction set; ``check_isa=False`` runs it anyway (tests, numerics checks).  With
  ``cast_weights`` (default on for bf16) the weights of every Linear / Conv / MultiheadAttention are stored in bf16
  once at construction, so autocast does not re-cast the ~107 M fp32 weights of the ViT-B/16 window path on every
  call (its weight cache only keeps casts of trainable leaves, and only inside one autocast region).  The cast itself changes nothing (autocast casts
  the same weights to bf16 before the same kernels: bit-identical logits with ``torch.backends.mha`` fast path off,
  tests/test_cpu_tiers.py), but with bf16 weights the ViT's ``nn.MultiheadAttention`` qualifies for torch's fused
  attention fast path (``_native_multi_head_attention``; with fp32 weights the bf16 input's dtype mismatch keeps it
  on the unfused path), so the default logits differ from plain autocast at bf16 rounding level.
  ``cast_weights=False`` is plain autocast; the CPU benchmark measures both.

int8 is not a torch engine precision: it is a model file (``weakclip-export --int8 IMAGES`` writes
``weakclip_int8.onnx``, run by the onnxruntime engine).
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


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weights (and biases) of every Linear, Conv, ConvTranspose and MultiheadAttention input projection
    of ``model`` in ``dtype``, in place; returns how many tensors were cast.  Only for running under autocast to
    ``dtype``: those modules' kernels are on autocast's lower-precision list, so their inputs are cast to ``dtype``
    anyway and the results do not change."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    n = 0
    for m in model.modules():
        names: tuple[str, ...]
        if isinstance(m, kinds):
            names = ("weight", "bias")
        elif isinstance(m, nn.MultiheadAttention):  # out_proj is a Linear (above); the packed / split in-projections
            names = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        else:
            continue
        for name in names:
            p = getattr(m, name, None)
            if isinstance(p, torch.Tensor) and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
                n += 1
    return n


class TorchEngine(Engine):
    """WeakCLIP in PyTorch.

    ``model``: a checkpoint path (read with :func:`weakclip.load_checkpoint`) or an ``nn.Module`` whose ``config`` is
    a WeakCLIPConfig and whose forward returns an object with ``.logits`` (B, K, H/4, W/4) (or the logits tensor).
    ``precision="fp16"`` runs under CUDA autocast (LayerNorm/softmax stay fp32, as torch's autocast lists decide);
    it is refused on CPU.  ``precision="bf16"`` runs under bf16 autocast on CPU or CUDA; on a CPU without
    avx512_bf16 / amx_bf16 it is refused (one line naming the missing instruction set) unless ``check_isa=False``.
    ``cast_weights`` (None: on for bf16, off for fp16) stores the matmul weights in the autocast dtype once (module
    docstring).
    ``channels_last`` converts the input windows (and the model) to NHWC.
    Windows may be CPU or device tensors; logits come back float32 on the windows' device.  The text embeddings
    T (K, E) are computed once at construction (a model without ``text_embeddings()`` is simply called).
    """

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
            raise PrecisionError("torch engine: int8 is a model file, not a torch precision: `weakclip export --int8 "
                              "IMAGES` writes weakclip_int8.onnx; run it with --engine onnxruntime")  # fmt: skip
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
                raise PrecisionError(f"torch engine: {why}; use fp32 (--precision fp32), or check_isa=False "
                                  "(--engine-opt check_isa=false) to run bf16 emulated, slower than fp32")  # fmt: skip
        if precision == "bf16" and device.type == "cuda" and check_isa and not torch.cuda.is_bf16_supported():
            raise PrecisionError(f"torch engine: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
        if model is None:
            raise EngineError("torch engine: give a checkpoint path (--model) or a model")
        given_module = isinstance(model, nn.Module)
        if isinstance(model, nn.Module):
            module: Any = model
        else:
            from weakclip import load_checkpoint

            if not os.path.exists(model):
                raise EngineError(f"torch engine: checkpoint {model} not found")
            module = load_checkpoint(model)
        cfg: Any = module.config
        super().__init__(
            class_names=cfg.class_names,
            crop_size=cfg.crop_size,
            mean=cfg.mean,
            std=cfg.std,
            size_divisor=getattr(cfg, "patch_size", 16),
        )
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        module = module.eval().to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.model: nn.Module | None = module
        # Text side precomputed once (SPEC §6), like the exported graphs: T (K, E), fp32 (before any weight cast).
        self.text: torch.Tensor | None = None
        if hasattr(module, "text_embeddings"):
            with torch.inference_mode():
                self.text = module.text_embeddings()
        self.autocast_dtype = _AUTOCAST_DTYPES.get(precision)
        self.cast_weights = bool(precision == "bf16" if cast_weights is None else cast_weights)
        if self.cast_weights and self.autocast_dtype is None:
            raise PrecisionError("torch engine: cast_weights needs precision 'bf16' or 'fp16'")
        if self.cast_weights and self.autocast_dtype is not None:
            # Cast a copy only when the caller handed us a module (never change the caller's model).
            if given_module:
                import copy

                module = self.model = copy.deepcopy(module)
            cast_matmul_weights(module, self.autocast_dtype)

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise EngineError("torch engine: used after close()")
        self.check_windows(windows)
        x = windows.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
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
