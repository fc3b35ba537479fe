"""WeakCLIP: CLIP adapted for weakly-supervised semantic segmentation (command line: ``weakclip``, ``weakclip.cli``).

The public names below are imported lazily, so light submodules start without importing open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"  # the one version: pyproject.toml reads it (dynamic), `weakclip --version` prints it

# weakclip.engines / export / training / benchmarks are the repository's top-level folders of those names, mapped
# by [tool.setuptools.package-dir].
_LAZY = {
    name: module
    for module, names in {
        "model.checkpoint": ("load_checkpoint", "save_checkpoint"),
        "data.classes": ("IMAGENET_MEAN", "IMAGENET_STD"),
        "model.config": ("PRESETS", "WeakCLIPConfig", "get_config"),
        "model.model": ("WeakCLIP", "WeakCLIPOutput", "build_from_config", "build_model", "parameter_table"),
    }.items()
    for name in names
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'weakclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
