"""The import direction of the whole package, read from the source (every import statement, lazy ones included).

Layers, lowest first: ``errors``/``progress`` → ``data`` (datasets, labels, file I/O, class lists) → ``model`` (the
network, its losses and checkpoints) → ``masks`` (inference, CRF post-processing, seeds, evaluation, the batch frame)
→ ``engines`` / ``export`` / ``training`` (each apart from the others) → ``cli`` (the commands) and ``benchmarks``.
``import weakclip`` (the lazy public names of ``weakclip/__init__.py``: the model and its checkpoints) counts as the
model layer.
A module may import its own layer and the layers below it, never one above or beside it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"engines": "engines", "export": "export", "training": "training", "benchmarks": "benchmarks"}
ALLOWED = {
    "base": {"base"},
    "data": {"base", "data"},
    "model": {"base", "data", "model"},
    "masks": {"base", "data", "model", "masks", "root"},
    "engines": {"base", "data", "model", "masks", "engines", "root"},
    "export": {"base", "data", "model", "masks", "export", "root"},
    "training": {"base", "data", "model", "masks", "training", "root"},
    "cli": {"base", "data", "model", "masks", "engines", "export", "training", "cli", "benchmarks", "root"},
    "benchmarks": {"base", "data", "model", "masks", "engines", "export", "training", "benchmarks", "root"},
    "root": {"root", "base", "cli", "data", "model"},  # the lazy public names (build_model, ...) and __main__
}


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "weakclip":
        return None
    if len(parts) == 1:
        return "root"  # weakclip/__init__.py (lazy public names) and __main__
    if parts[1] in ("errors", "progress"):
        return "base"
    if parts[1] == "__main__":
        return "root"
    return parts[1]


def modules() -> list[tuple[str, Path]]:
    found = []
    for p in sorted((ROOT / "weakclip").rglob("*.py")):
        found.append((".".join(("weakclip", *p.relative_to(ROOT / "weakclip").with_suffix("").parts)), p))
    for name, folder in FOLDERS.items():
        for p in sorted((ROOT / folder).rglob("*.py")):
            found.append((".".join(("weakclip", name, *p.relative_to(ROOT / folder).with_suffix("").parts)), p))
    return [(m.removesuffix(".__init__"), p) for m, p in found]


def imported(path: Path, module: str) -> list[tuple[str, int]]:
    out = []
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            out.append((base, node.lineno))
    return out


def test_every_module_is_in_a_layer() -> None:
    assert {layer(m) for m, _ in modules()} <= set(ALLOWED)


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    here = layer(module)
    assert here is not None
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for target, line in imported(path, module)
        if (there := layer(target)) is not None and there not in ALLOWED[here]
    ]
    assert not wrong, wrong


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from weakclip.engines.generate import generate\n")
    assert [layer(t) for t, _ in imported(p, "weakclip.model.x")] == ["engines"]
    assert "engines" not in ALLOWED["model"]
