"""The export layer's import structure: no circle between its modules, no dependency on the engines, and every module
importable by itself (fresh, in any order) — the four-file circle to_onnx ↔ custom_op/fp16/quantize is gone."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "export"
MODULES = sorted(p.stem for p in EXPORT.glob("*.py") if p.stem != "__init__")


def _imports(path: Path) -> set[str]:
    """Every weakclip.* module imported anywhere in the file (top level, in functions, under TYPE_CHECKING)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("weakclip"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("weakclip") and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from weakclip.export import core`
    return out


def _export_graph() -> dict[str, set[str]]:
    graph = {}
    for m in MODULES:
        deps = {d.split(".")[2] for d in _imports(EXPORT / f"{m}.py") if d.startswith("weakclip.export.")}
        graph[m] = {d for d in deps if d in MODULES and d != m}
    return graph


def test_export_modules_form_no_import_circle() -> None:
    graph = _export_graph()
    # depth-first search for a cycle
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import circle: {' -> '.join([*path, m, d])}"
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [])
    assert graph.get("core", set()) <= {"wrappers"}, graph["core"]  # the core imports no variant
    for variant in ("custom_op", "fp16", "quantize"):
        assert "to_onnx" not in graph[variant] and "pipeline" not in graph[variant], (variant, graph[variant])
    assert not any("to_onnx" in deps for deps in graph.values())  # the CLI is imported by nobody


def test_export_does_not_import_the_engines() -> None:
    for m in MODULES:
        engines = sorted(d for d in _imports(EXPORT / f"{m}.py") if d.startswith("weakclip.engines"))
        assert not engines, f"export/{m}.py imports {engines} (plugin identity lives in weakclip.model.plugin_names)"


def test_each_export_module_imports_fresh_by_itself() -> None:
    """One interpreter; before each module every weakclip.export.* entry is dropped from sys.modules, so each is
    imported first (a circle that only works in one import order fails here)."""
    code = (
        "import importlib, json, sys\n"
        "import torch, weakclip.model.model\n"
        f"mods = {MODULES!r}\n"
        "loaded = {}\n"
        "for m in mods:\n"
        "    for k in [k for k in sys.modules if k.startswith('weakclip.export')]:\n"
        "        del sys.modules[k]\n"
        "    importlib.import_module('weakclip.export.' + m)\n"
        "    loaded[m] = sorted(k for k in sys.modules if k.startswith('weakclip.engines.'))\n"
        "print(json.dumps(loaded))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(loaded) == set(MODULES)
    assert not any(loaded.values()), loaded  # no engines module is pulled in by importing the exporter


def test_plugin_identity_is_shared() -> None:
    from weakclip.engines import cuda_ops
    from weakclip.export import custom_op
    from weakclip.model import plugin_names

    on_disk = json.loads((REPO / "engines" / "csrc" / "plugin_names.json").read_text())
    assert plugin_names.plugin_spec() == on_disk
    assert custom_op.plugin_spec() is plugin_names.plugin_spec()
    for name in ("ordered_weights", "state_dict_of", "CoAttnDims"):  # the CUDA loader uses the same layout code
        assert getattr(cuda_ops, name) is getattr(plugin_names, name), name


def test_module_entry_point() -> None:
    """``python -m weakclip.export.to_onnx`` (the script form is tested in test_export.py)."""
    r = subprocess.run(
        [sys.executable, "-m", "weakclip.export.to_onnx", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0 and "--checkpoint" in r.stdout and "--int8" in r.stdout, r.stderr[-2000:]
