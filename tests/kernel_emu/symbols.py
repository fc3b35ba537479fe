"""Exported dynamic symbols of a built shared library (``nm -D --defined-only``), and what the WeakCLIP libraries may
export.  Used by tests/test_cuda_build.py and tests/test_plugin_compile.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PLUGIN_ENTRY_POINT = "getCreators"  # TensorRT's plugin-library entry point (IPluginRegistry::loadLibrary)


def exported_symbols(lib: str | Path) -> set[str]:
    """Names of the defined dynamic symbols of ``lib`` (version suffixes such as ``@@VERS_1`` removed)."""
    nm = shutil.which("nm")
    if nm is None:
        raise FileNotFoundError("nm not found (binutils)")
    out = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if len(line.split()) >= 2}


def unexpected_plugin_exports(symbols: set[str], *, get_creators: bool) -> list[str]:
    """Symbols the TensorRT plugin library exports beyond its entry point (must be empty): no weakclip_* C API, no
    CUDA runtime, no C++ library internals.  ``get_creators``: built with WEAKCLIP_TRT_GET_CREATORS."""
    allowed = {PLUGIN_ENTRY_POINT} if get_creators else set()
    return sorted(symbols - allowed)
