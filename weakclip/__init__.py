"""WeakCLIP: CLIP adapted for weakly-supervised semantic segmentation.

The public names below are imported lazily, so light submodules (``weakclip.data``, ``weakclip.evaluate``,
``weakclip.io``) start without importing open_clip.

Command line: ``weakclip <subcommand>`` (``weakclip.cli``; ``python -m weakclip``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__version__ = "0.1.0"  # the one version: pyproject.toml reads it (dynamic), `weakclip --version` prints it

# The sub-packages ``weakclip.engines``, ``weakclip.export``, ``weakclip.training`` and ``weakclip.benchmarks`` are
# the repository's top-level folders ``engines/``, ``export/``, ``training/`` and ``benchmarks/``: the wheel installs
# them under ``weakclip/`` (``[tool.setuptools.package-dir]`` in pyproject.toml), and in a source checkout the same
# names resolve to the folders beside this one.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "engines" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821  (the package's own __path__)

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
