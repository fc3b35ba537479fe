"""Session fixtures shared by the test modules, and how `make test` spreads the modules over its workers.

`make test` runs pytest-xdist with ``--dist loadgroup``, scheduled by :func:`pytest_xdist_make_scheduler`: the
tests of one module run in one worker (so module-scoped fixtures are built once), and the modules that read the
same costly session fixture (:data:`SHARED_FIXTURES`) form one group, run by one worker, which builds that fixture
once while the other worker runs other modules; these groups are sent first.  (xdist's own ``xdist_group`` marks
do not group under pytest 9.)  The session fixtures are also correct when two workers ask for them: they are built
under a file lock in the base folder that the workers share, and reused from there.
"""

from __future__ import annotations

import functools
import os
import re

# Never let open_clip / huggingface_hub try to download weights during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Costly session fixtures: a module that names one of them (first match) runs in that fixture's group.
SHARED_FIXTURES = ("tiny_export", "tiny_onnx")
# The longest scheduling units, longest first (seconds in `make test` on a clean clone, 2 cores: tiny_onnx 134,
# tiny_export 112, README route 84, image-like venv 82 (its build), wheel 63, training 35, GPU benchmark dry runs 29,
# kernel emulation 28, plugin compile 25; every other module ≤ 13): sent to the workers first, the short modules
# fill in behind them.
LONGEST = (
    "tiny_onnx",
    "tiny_export",
    "test_readme_route",
    "test_gpu_image_dryrun",
    "test_wheel",
    "test_training",
    "test_gpu_bench",
    "test_kernel_emulation",
    "test_plugin_compile",
)


@functools.cache
def shared_group(module: Path) -> str | None:
    """The costly session fixture that ``module`` (a test file) names, if any: its scheduling group."""
    text = module.read_text(encoding="utf-8") if module.is_file() else ""
    return next((f for f in SHARED_FIXTURES if re.search(rf"\b{f}\b", text)), None)


def pytest_configure(config: pytest.Config) -> None:
    """Unless OMP_NUM_THREADS is set: each test process gets its share of the cores (2 cores, 2 xdist workers: 1
    thread each).  Runs in the controller before the workers start, so they inherit it.  More threads than cores make
    OpenMP's spinning threads wait on each other: the suite took 440 s with 2 threads per worker, 393 s with 1."""
    if "OMP_NUM_THREADS" not in os.environ:
        from weakclip.engines.base import usable_cores  # imports no torch

        workers = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
        os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cores() // max(1, int(workers or 1))))


@pytest.hookimpl(optionalhook=True)  # xdist's hook (pytest-xdist is in the dev extra)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """--dist loadgroup: one scope per module, or per shared fixture (module docstring)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return shared_group(root / module) or module

    config.option.loadscopereorder = False  # keep the collection order (below), not xdist's "most tests first"
    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In xdist's workers: the units of LONGEST first, in that order (the scheduler sends units in collection order)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        order = {unit: i for i, unit in enumerate(LONGEST)}
        items.sort(key=lambda it: order.get(shared_group(Path(it.path)) or Path(it.path).stem, len(order)))


TINY_EXPORT_SEED = 0


def tiny_model():
    """The tiny preset at crop 512 (so H, W up to 512 are exportable), fixed seed, eval mode."""
    import torch

    import weakclip

    torch.manual_seed(TINY_EXPORT_SEED)
    return weakclip.build_model("tiny", crop_size=512).eval()


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder built once per test run by ``build(folder)``, also across pytest-xdist workers: the first caller
    builds it under a file lock (in the workers' common base folder), later callers reuse it.  A failed build
    leaves nothing behind, so the next caller tries again (and fails with the same message)."""
    from filelock import FileLock  # a dependency of torch

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-of-<user>/pytest-<n>/: shared by the workers of this run
    folder, done = base / f"shared-{name}", base / f"shared-{name}.complete"
    with FileLock(str(base / f"shared-{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.touch()
    return folder


def _save_tiny_checkpoint(folder: Path) -> Path:
    import weakclip

    ckpt = folder / "tiny.safetensors"
    weakclip.save_checkpoint(tiny_model(), ckpt)
    return ckpt


def _export(folder: Path, *options: str) -> None:
    from weakclip.export import to_onnx

    ckpt = _save_tiny_checkpoint(folder)
    rc = to_onnx.main(["--checkpoint", str(ckpt), "--out", str(folder / "onnx"), *options])
    assert rc == 0, "weakclip-export failed (its self-check or an exporter error; see the captured output)"


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(export folder, checkpoint) of one tiny export of every graph with --custom-op --fp16 (self-checks on), for
    the tests of the exported files themselves (export, ONNX Runtime / TensorRT engines)."""
    base = shared_dir(tmp_path_factory, "tiny_export", lambda d: _export(d, "--custom-op", "--fp16"))
    return base / "onnx", base / "tiny.safetensors"


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(export folder, checkpoint) like :func:`tiny_export` (same model, same checkpoint) but only the end-to-end
    graph ``weakclip.onnx`` and its ``--int8`` form ``weakclip_int8.onnx`` (calibrated on 4 windows of a synthetic
    set; self-checks on): a third of the export time, for the tests that run those files and nothing else."""

    def build(folder: Path) -> None:
        from weakclip.data.synthetic import make_synthetic_dataset

        make_synthetic_dataset(folder / "calib", images=6, seed=2, val_images=1)
        _export(folder, "--graphs", "end_to_end", "--int8", str(folder / "calib" / "JPEGImages"), "--int8-count", "4")

    base = shared_dir(tmp_path_factory, "tiny_onnx", build)
    return base / "onnx", base / "tiny.safetensors"
