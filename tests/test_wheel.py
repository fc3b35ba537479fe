"""The wheel, as a user gets it: built from the checkout's sources, installed into a fresh virtual environment, and
run from a folder outside the checkout — every console script's ``--help``, ``weakclip --version`` and the tiny
pipeline (synthetic → train 2 iterations → export → generate → evaluate → ``weakclip demo`` on those files), with a
check that nothing was written into the installed package.

How the fresh environment reuses the installed dependencies: ``python -m venv --without-pip`` (from the base
interpreter, as venv always does), plus one ``.pth`` file listing the site-packages folder(s) of the interpreter
running the tests (``.venv``: torch, onnxruntime, ...).  A plain path in a ``.pth`` file is appended to
``sys.path`` without processing that folder's own ``.pth`` files, so the checkout's editable install of weakclip
(an import hook installed by a ``.pth`` file in ``.venv``) stays inactive and the wheel's copy in the fresh
venv's own site-packages (earlier on ``sys.path``) is the one imported — the test checks ``weakclip.__file__``.
The wheel goes in with ``.venv``'s pip (``pip --python <fresh venv>``) and ``--no-deps --no-index``: nothing is
downloaded.  (``venv --system-site-packages`` would expose the *base* interpreter's packages, not ``.venv``'s.)
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} → exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _copy_sources(dst: Path) -> None:
    """What the build reads — pyproject.toml, readme, license files, and the package folders named in pyproject —
    copied so that the build's own files (build/, *.egg-info) never land in the checkout."""
    project, tool = PYPROJECT["project"], PYPROJECT["tool"]["setuptools"]
    files = ["pyproject.toml", project["readme"], *project.get("license-files", [])]
    folders = {"weakclip", *(v.split("/")[0] for v in tool.get("package-dir", {}).values())}
    dst.mkdir(parents=True)
    for f in files:
        shutil.copy2(ROOT / f, dst / f)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info")
    for d in sorted(folders):
        shutil.copytree(ROOT / d, dst / d, ignore=skip)


def _setuptools_ok() -> bool:
    """True when this interpreter has a setuptools new enough for pyproject's build requirement (then the build
    runs without isolation: offline, and seconds faster)."""
    try:
        import setuptools
    except ImportError:
        return False
    need = next(r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    minimum = need.split(">=")[1].strip() if ">=" in need else "0"
    have = tuple(int(x) for x in setuptools.__version__.split(".")[:2] if x.isdigit())
    return have >= tuple(int(x) for x in minimum.split(".")[:2])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("wheel")
    src, dist, venv = base / "src", base / "dist", base / "venv"
    _copy_sources(src)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(dist), str(src)]
    if _setuptools_ok():
        build.insert(4, "--no-build-isolation")
    log = _run(build, base, env)
    for warning in ("absent from the `packages` configuration", "as an importable package", "license` as a TOML table"):
        assert warning not in log.stdout + log.stderr, f"setuptools warns: ...{warning}..."
    (wheel,) = dist.glob("weakclip-*.whl")

    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    vpy = venv / "bin" / "python"
    purelib = Path(
        _run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (purelib / "_weakclip_test_reuse_deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours) if Path(p).is_dir()))
    _run(
        [sys.executable, "-m", "pip", "--python", str(vpy), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        base,
        env,
    )

    work, help_cwd = base / "work", base / "help"  # outside the checkout: the current directories of the commands
    work.mkdir()
    help_cwd.mkdir()
    env.update({"HF_HUB_OFFLINE": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"})
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    run = functools.partial(subprocess.run, cwd=help_cwd, env=env, capture_output=True, text=True, timeout=600)
    helps = [(cmd, pool.submit(run, cmd)) for cmd in _help_commands(venv / "bin")]
    pool.shutdown(wait=False)
    yield {
        "wheel": wheel,
        "bin": venv / "bin",
        "pkg": purelib / "weakclip",
        "work": work,
        "env": env,
        "help": helps,
        "help_cwd": help_cwd,
    }
    for _, fut in helps:
        fut.cancel()


def _package_files(pkg: Path) -> set[str]:
    return {
        str(p.relative_to(pkg))
        for p in pkg.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_wheel_contents(installed: dict) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for must in (
        "weakclip/py.typed",
        "weakclip/cli/__init__.py",
        "weakclip/cli/demo.py",
        "weakclip/cli/generate.py",
        "weakclip/progress.py",
        "weakclip/errors.py",
        "weakclip/data/io.py",
        "weakclip/model/model.py",
        "weakclip/masks/batch.py",
        "weakclip/masks/report_page.html",
        "weakclip/training/configs/synthetic_tiny.yaml",
        "weakclip/training/configs/voc_vit_b16.yaml",
        "weakclip/engines/csrc/plugin_names.json",
        "weakclip/engines/csrc/coattn_kernel.cu",
        "weakclip/benchmarks/common.py",
    ):
        assert must in names, must
    assert not any(n.startswith("weakclip/benchmarks/results") for n in names)
    assert not any(n.split("/")[0] in ("engines", "export", "training", "benchmarks", "tests") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_installed_package_is_the_wheel_and_version_matches(installed: dict) -> None:
    code = (
        "import importlib.metadata as m, weakclip, weakclip.training, weakclip.engines, weakclip.benchmarks\n"
        "print(weakclip.__file__); print(len(weakclip.__path__)); print(weakclip.__version__, m.version('weakclip'))"
    )
    out = _run([str(installed["bin"] / "python"), "-c", code], installed["work"], installed["env"]).stdout.split("\n")
    assert Path(out[0]).parent == installed["pkg"]  # not the checkout
    assert out[1] == "1"  # no checkout folder appended to weakclip.__path__
    version = out[2].split()[0]
    assert out[2] == f"{version} {version}"
    got = _run([str(installed["bin"] / "weakclip"), "--version"], installed["work"], installed["env"]).stdout
    assert got.strip() == f"weakclip {version}"


def test_tiny_pipeline_outside_the_checkout(installed: dict) -> None:
    work, env = installed["work"], installed["env"]
    before = _package_files(installed["pkg"])
    wk = str(installed["bin"] / "weakclip")
    d = "demo/data"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _run([wk, *args], work, env)

    # the whole route from the wheel (synthetic → train → export → masks → mIoU → report), then a rerun that reuses it
    run("demo", "--quick", "--out", "demo")
    assert (work / "demo" / "result.json").is_file() and (work / "demo" / "report" / "index.html").is_file()
    assert "reusing" in run("demo", "--quick", "--out", "demo").stdout
    # each tool's console entry on the demo's files
    run("synthetic", "--out", "syn", "--images", "2", "--val", "1", "--size", "48", "48")
    run(
        "train",
        f"data.root={d}",
        "work_dir=run2",
        "train.iters=2",
        "train.batch_size=2",
        "data.num_workers=0",
        "schedule.val_interval=2",
        "--no-progress",
    )  # the packaged default config
    gen = run(
        "generate",
        "--model",
        "demo/onnx/weakclip.onnx",
        "--images",
        f"{d}/ImageSets/Segmentation/train.txt",
        "--image-root",
        f"{d}/JPEGImages",
        "--out",
        "masks",
        "--no-progress",
    )
    assert "weakclip generate:" in gen.stdout
    run("evaluate", "--pred", "masks", "--gt", f"{d}/SegmentationClass", "--json", "eval.json")
    assert 0.0 <= json.loads((work / "eval.json").read_text())["miou"] <= 1.0
    assert _package_files(installed["pkg"]) == before  # nothing written into the installed package


def _help_commands(bin_dir: Path) -> list[list[str]]:
    cmds = [[str(bin_dir / s), "--help"] for s in sorted(PYPROJECT["project"]["scripts"])]
    cmds += [[str(bin_dir / "weakclip"), *sub, "--help"] for sub in (["seeds"], ["demo"], ["bench"])]
    return cmds


def test_every_console_script_help(installed: dict) -> None:
    """Started in the background by the fixture (they mostly wait for imports while the pipeline test runs its
    single-threaded export on the other core); collected here."""
    for cmd, fut in installed["help"]:
        p = fut.result(timeout=600)
        if p.returncode != 0 and "is not available in this installation" in p.stderr:
            continue  # check-data / seeds: written by another change, reported missing in one line
        assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stderr[-2000:]}"
        assert p.stdout.lstrip().startswith("usage:"), f"{cmd}: {p.stdout[:200]}"
    assert not list(installed["help_cwd"].iterdir())  # --help writes nothing
