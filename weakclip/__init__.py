"""WeakCLIP: CLIP adapted for weakly-supervised semantic segmentation.

The public names below are imported lazily, so light submodules (``weakclip.data``, ``weakclip.evaluate``,
``weakclip.io``) start without importing open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "IMAGENET_MEAN": "config",
    "IMAGENET_STD": "config",
    "PRESETS": "config",
    "WeakCLIPConfig": "config",
    "get_config": "config",
    "WeakCLIP": "model",
    "WeakCLIPOutput": "model",
    "build_from_config": "model",
    "build_model": "model",
    "parameter_table": "model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'weakclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
