"""The PyTorch reference engine: a WeakCLIP checkpoint (or module) in eval mode under ``torch.inference_mode``."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from weakclip.engines.base import Engine, EngineError

PRECISIONS = ("fp32", "fp16")


class TorchEngine(Engine):
    """WeakCLIP in PyTorch.

    ``model``: a checkpoint path (read with :func:`weakclip.load_checkpoint`) or an ``nn.Module`` whose ``config`` is
    a WeakCLIPConfig and whose forward returns an object with ``.logits`` (B, K, H/4, W/4) (or the logits tensor).
    ``precision="fp16"`` runs under CUDA autocast (LayerNorm/softmax stay fp32, as torch's autocast lists decide);
    it is refused on CPU.  ``channels_last`` converts the input windows (and the model) to NHWC.
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
    ) -> None:
        device = torch.device(device)
        if precision not in PRECISIONS:
            raise EngineError(f"torch engine: precision must be one of {PRECISIONS}, got {precision!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("torch engine: device 'cuda' was asked for but torch.cuda.is_available() is False")
        if precision == "fp16" and device.type != "cuda":
            raise EngineError(f"torch engine: fp16 needs a CUDA device (got {device}); use precision='fp32' on CPU")
        if model is None:
            raise EngineError("torch engine: give a checkpoint path (--model) or a model")
        if not isinstance(model, nn.Module):
            from weakclip import load_checkpoint

            if not os.path.exists(model):
                raise EngineError(f"torch engine: checkpoint {model} not found")
            model = load_checkpoint(model)
        cfg = model.config
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
        model = model.eval().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model: nn.Module | None = model
        # Text side precomputed once (SPEC §6), like the exported graphs: T (K, E), fp32.
        self.text: torch.Tensor | None = None
        if hasattr(model, "text_embeddings"):
            with torch.inference_mode():
                self.text = model.text_embeddings()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise EngineError("torch engine: used after close()")
        self.check_windows(windows)
        x = windows.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.float16)
            if self.precision == "fp16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.model(x) if self.text is None else self.model(x, text_embeddings=self.text)
        logits = getattr(out, "logits", out)  # (B, K, H/4, W/4)
        return logits.float().to(windows.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": str(self.device), "precision": self.precision}

    def close(self) -> None:
        self.model = self.text = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
