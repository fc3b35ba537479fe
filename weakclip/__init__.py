"""WeakCLIP: CLIP adapted for weakly-supervised semantic segmentation.

The public names below are imported lazily, so light submodules (``weakclip.data``, ``weakclip.masks.evaluate``,
``weakclip.data.io``) start without importing open_clip.

Command line: ``weakclip <subcommand>`` (``weakclip.cli``; ``python -m weakclip``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"  # the one version: pyproject.toml reads it (dynamic), `weakclip --version` prints it

# The sub-packages ``weakclip.engines``, ``weakclip.export``, ``weakclip.training`` and ``weakclip.benchmarks`` are
# the repository's top-level folders ``engines/``, ``export/``, ``training/`` and ``benchmarks/``, mapped by
# ``[tool.setuptools.package-dir]`` (the wheel installs them under ``weakclip/``; ``pip install -e .`` maps them for
# a checkout).  The library itself: ``weakclip.model`` (the network and its checkpoints), ``weakclip.data`` (datasets,
# labels, file I/O), ``weakclip.masks`` (inference, CRF, seeds, evaluation, the batch frame), ``weakclip.cli`` (the
# commands); ``errors`` and ``progress`` are shared by all.
_LAZY = {
    "load_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "IMAGENET_MEAN": "data.classes",
    "IMAGENET_STD": "data.classes",
    "PRESETS": "model.config",
    "WeakCLIPConfig": "model.config",
    "get_config": "model.config",
    "WeakCLIP": "model.model",
    "WeakCLIPOutput": "model.model",
    "build_from_config": "model.model",
    "build_model": "model.model",
    "parameter_table": "model.model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'weakclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
