"""benchmarks/gpu_check.sh --dry-run in a virtual environment that holds only what the lent GPU machine's image has
(benchmarks/gpu_image.txt) plus the wheels that travel with the check (.whl/, ``make gpu-wheels``): the proof, on a
CPU machine, that the check's first call on the GPU machine finds every package it needs.

The environment: a fresh venv of this interpreter's Python (the image has 3.12; the torch pair of .venv is built for
this one), the pinned list installed with ``--no-deps`` (so nothing else comes along), and torch + torchvision of
.venv (with their own dependencies that the list does not pin) through a folder of symbolic links named by a
``.pth`` file: no copy of the 0.8–4 GB torch.  It is cached under .cache/gpu-image-venv/<key> (gitignored); the key
hashes the list, the Python version and the torch pair, so a change to any of them builds a new one (about a minute
here), and later runs reuse it.  The wheels are installed by gpu_check.sh itself, as on the GPU machine.

Skips only when a pinned package or wheel cannot be obtained here (with pip's reason); the environment is checked to
hold nothing the image lacks (open_clip, ftfy, wcwidth, pydensecrf, tensorrt, ONNX Runtime's CUDA provider).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_gpu_bench import GPU_ROWS, e2e, stray_outputs

REPO = Path(__file__).resolve().parents[1]
IMAGE_LIST = REPO / "benchmarks" / "gpu_image.txt"
WHEEL_LIST = REPO / "benchmarks" / "gpu_wheels.txt"
WHEELS = REPO / ".whl"
CACHE = REPO / ".cache" / "gpu-image-venv"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
TORCH_PAIR = ("torch", "torchvision")
VENV_OWN = {"pip", "setuptools"}  # what `python -m venv` puts there (the image has both too)
ABSENT_ON_IMAGE = ("open_clip", "ftfy", "wcwidth", "pydensecrf", "tensorrt")


def pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a name==version list (comments and blank lines ignored)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: '{line}' is not pinned with =="
            out[canonicalize_name(name)] = version.strip()
    return out


def torch_pair_closure(exclude: set[str]) -> list[md.Distribution]:
    """torch and torchvision as installed in this interpreter, with their requirements (extras followed), less the
    names in ``exclude``."""
    found: dict[str, md.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [(n, frozenset()) for n in TORCH_PAIR]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in exclude or (key, extras) in done:
            continue
        done.add((key, extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            if name in TORCH_PAIR:
                pytest.skip(f"{name} is not installed in {sys.prefix} (make setup)")
            continue  # a requirement for another platform / Python
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def top_level_entries(dist: md.Distribution) -> set[str]:
    """The site-packages entries (folders and files) a distribution installed, its .dist-info included."""
    entries = set()
    for f in dist.files or []:
        parts = Path(f).parts
        if parts and parts[0] != ".." and not parts[0].endswith(".pth") and parts[0] != "__pycache__":
            entries.add(parts[0])
    return entries


def base_python() -> Path:
    v = sys.version_info
    for cand in (Path(sys.base_prefix) / "bin" / f"python{v.major}.{v.minor}", Path(sys._base_executable)):
        if cand.is_file():
            return cand
    pytest.skip(f"no base interpreter found for {sys.executable} to make a venv from")


def ensure_wheels() -> list[Path]:
    """The wheels of gpu_wheels.txt in .whl/ (``make gpu-wheels`` first when one is missing)."""

    def missing() -> list[str]:
        have = {canonicalize_name(p.name.split("-")[0]) + "==" + p.name.split("-")[1] for p in WHEELS.glob("*.whl")}
        return [f"{n}=={v}" for n, v in pins(WHEEL_LIST).items() if f"{n}=={v}" not in have]

    if missing():
        make = shutil.which("make")
        if make is None:
            pytest.skip(f".whl/ lacks {missing()} and make is not installed to run `make gpu-wheels`")
        proc = subprocess.run(
            [make, "-s", "gpu-wheels"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, PIP_RETRIES="1", PIP_DEFAULT_TIMEOUT="30"),
        )
        if proc.returncode != 0 or missing():
            pytest.skip(f"`make gpu-wheels` could not obtain {missing()}: {(proc.stdout + proc.stderr)[-600:]}")
    return sorted(WHEELS.glob("*.whl"))


@pytest.fixture(scope="module")
def image_venv() -> dict:
    wanted = pins(IMAGE_LIST)
    clash = sorted(set(wanted) & {canonicalize_name(n) for n in (*TORCH_PAIR, *ABSENT_ON_IMAGE)})
    assert not clash, f"gpu_image.txt must not pin {clash}"
    stack = torch_pair_closure(set(wanted) | VENV_OWN)
    stack_ids = [f"{d.metadata['Name']}=={d.version}" for d in stack]
    key = hashlib.sha256(
        "\n".join([IMAGE_LIST.read_text(), platform.python_version(), *stack_ids]).encode()
    ).hexdigest()[:16]
    venv = CACHE / key
    python = venv / "bin" / "python"
    info = {"venv": venv, "python": python, "stack": stack_ids, "pins": wanted, "wheels": ensure_wheels()}
    if (venv / ".complete").is_file():
        return info
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f"{key}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([str(base_python()), "-m", "venv", str(partial)], check=True, timeout=300)
    # the pinned list alone: --no-deps, so nothing that is not listed comes along
    proc = subprocess.run(
        [
            str(partial / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--disable-pip-version-check",
            "-r",
            str(IMAGE_LIST),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        out = proc.stdout + proc.stderr
        if re.search(r"No matching distribution|Could not find a version", out):
            pytest.skip(f"a package of benchmarks/gpu_image.txt cannot be obtained here: {out[-800:]}")
        pytest.fail(f"pip install -r gpu_image.txt failed:\n{out[-3000:]}")
    # torch + torchvision of .venv through symbolic links (a .pth names the folder)
    links = partial / "torch-pair"
    links.mkdir()
    for dist in stack:
        root = Path(dist.locate_file(""))
        for entry in top_level_entries(dist):
            if (root / entry).exists() and not (links / entry).exists():
                (links / entry).symlink_to(root / entry)
    (site,) = (partial / "lib").glob("python3*/site-packages")
    (site / "weakclip_torch_pair.pth").write_text(f"{links}\n".replace(str(partial), str(venv)))
    (partial / ".complete").write_text("\n".join(stack_ids) + "\n")
    # the .pth names the final folder: rename into place (another process may have won the race)
    try:
        partial.rename(venv)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    assert (venv / ".complete").is_file()
    for old in CACHE.iterdir():  # environments of earlier lists / torch pairs
        if old.name != key and not old.name.startswith(f"{key}.partial-"):
            shutil.rmtree(old, ignore_errors=True)
    return info


def _in_venv(info: dict, code: str, cwd: Path) -> str:
    """Run ``code`` in the venv's python from ``cwd`` (not the checkout, whose weakclip.egg-info would show)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(info["python"]), "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_image_venv_holds_only_the_image_packages(image_venv: dict, tmp_path: Path) -> None:
    """Honesty of the stand-in: exactly the pinned list + the torch pair, none of what the image lacks."""
    out = json.loads(
        _in_venv(
            image_venv,
            f"""
import importlib.metadata as md, importlib.util, json, sys
import onnxruntime, torch, torchvision
print(json.dumps({{
    "dists": sorted({{d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()}}),
    "absent": {{m: importlib.util.find_spec(m) is None for m in {list(ABSENT_ON_IMAGE)!r}}},
    "providers": onnxruntime.get_available_providers(),
    "torch": torch.__version__, "torchvision": torchvision.__version__, "prefix": sys.prefix,
}}))
""",
            tmp_path,
        )
    )
    assert all(out["absent"].values()), f"the image-like venv has what the image lacks: {out['absent']}"
    assert "CUDAExecutionProvider" not in out["providers"]
    expected = set(image_venv["pins"]) | {canonicalize_name(s.split("==")[0]) for s in image_venv["stack"]} | VENV_OWN
    assert set(out["dists"]) == expected, (sorted(set(out["dists"]) - expected), sorted(expected - set(out["dists"])))
    assert Path(out["prefix"]) == image_venv["venv"]


def _dry_run(info: dict, tmp: Path, *extra: str, **env_extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``gpu_check.sh --out results --dry-run`` with the venv's python from an empty working folder (``tmp/cwd``)."""
    work_tmp, cwd = tmp / "tmp", tmp / "cwd"
    work_tmp.mkdir(parents=True)
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "WEAKCLIP_WHEELS")}
    env.update(PY=str(info["python"]), TMPDIR=str(work_tmp), HF_HUB_OFFLINE="1", **env_extra)
    proc = subprocess.run(
        ["bash", str(GPU_CHECK), "--out", "results", "--dry-run", *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )
    left = list(work_tmp.glob("weakclip_gpu_check.*"))
    assert not left, f"the work folder (wheels, build) must be removed at the end: {left}"
    return proc, cwd / "results"


@pytest.fixture(scope="module")
def dry_run(image_venv: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The GPU machine's first call rehearsed once: the image-like venv, an empty working folder, relative --out."""
    before = stray_outputs()
    proc, out = _dry_run(image_venv, tmp_path_factory.mktemp("gpu_check"))
    return {"proc": proc, "cwd": out.parent, "out": out, "stray": stray_outputs() - before}


def test_gpu_check_dry_run_passes_in_the_image_venv(image_venv: dict, dry_run: dict) -> None:
    """The output contract (only result files, nothing outside --out or in the checkout, the log holds the summary)
    and the image's facts: every wheel installed, what the machine lacks named, the CPU-capable e2e rows ran."""
    proc, out = dry_run["proc"], dry_run["out"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in dry_run["cwd"].iterdir()) == ["results"], "wrote outside --out"
    assert not dry_run["stray"], f"outputs written into the checkout: {sorted(dry_run['stray'])}"
    names = {p.name for p in out.iterdir()}
    # only result files: the build and the installed wheels stay in the temporary work folder
    assert names == {"gpu_check.log", "gpu_check.json", "gpu_e2e.json", "gpu_e2e.md", "gpu_e2e.png"}, names
    assert "Build files have been written to" in proc.stdout, "the dry run configures CMake"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: DRY-RUN PASS") and f"outputs in {out}" in last, last
    assert last in (out / "gpu_check.log").read_text(), "the log must hold everything printed, summary included"
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {k: v["result"] for k, v in report["steps"].items()}
    expect_device = "ok" if torch.cuda.is_available() else "none"
    assert steps == {
        "device": expect_device,
        "deps": "ok",
        "build": "configured",
        "parity": "skipped",
        "kernel_bench": "skipped",
        "e2e": "ok",
    }, report
    assert report["dry_run"] is True and report["exit_code"] == 0 and report["cut"] == []
    assert report["python"] == str(image_venv["python"])
    deps = report["steps"]["deps"]["note"]
    for wheel in image_venv["wheels"]:  # gpu_check.sh installed every wheel of .whl/
        assert wheel.name.split("-")[0] in deps, deps
    assert "not available on this machine: pydensecrf (CRF), TensorRT, ONNX Runtime CUDA EP" in deps, deps
    rows = {r["key"]: r for r in json.loads((out / "gpu_e2e.json").read_text())["rows"]}
    assert rows["official-fp32"]["status"] == "ok" and rows["engine-fp32"]["status"] == "ok"
    for key in ("ort-cuda-fp32", "trt-fp16"):
        assert rows[key]["status"] == "skipped" and "not available on this machine" in rows[key]["reason"], rows[key]


def test_cpu_smoke_e2e_report(dry_run: dict) -> None:
    out = dry_run["out"]
    assert dry_run["proc"].returncode == 0, dry_run["proc"].stdout[-4000:]
    assert (out / "gpu_e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "gpu_e2e.json").read_text())
    assert report["smoke"] is True and report["preset"] == "tiny" and report["png"] == "gpu_e2e.png"
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == list(e2e.ROWS)
    for key in ("official-fp32", "engine-fp32"):  # the CPU-capable rows really ran
        r = rows[key]
        assert r["status"] == "ok" and r["windows_per_s"] > 0 and r["argmax_agreement"] == 1.0, r
        assert r["images_per_s_12_views"] == pytest.approx(r["windows_per_s"] / 52)
        assert r["timing"]["repeats"] == 2 and r["timing"]["median_s"] > 0
    assert rows["official-fp32"]["batch"] == 1 and rows["engine-fp32"]["batch"] == 2
    assert rows["official-fp32"]["speedup"] == pytest.approx(1.0)
    for key in GPU_ROWS:  # skipped with their reason, no number
        r = rows[key]
        assert r["status"] == "skipped" and r["reason"] and "windows_per_s" not in r, r
    assert "needs a CUDA GPU" in rows["engine-fp16"]["reason"]
    for key, package in (("ort-cuda-fp32", "onnxruntime"), ("trt-fp16", "tensorrt")):
        reason = rows[key]["reason"]
        assert "not available on this machine" in reason or "needs a CUDA GPU" in reason, reason
        assert "not available on this machine" not in reason or package in reason
    assert [g["met"] for g in report["goals"]] == [None, None, None]  # nothing is "met" on a CPU

    md = (out / "gpu_e2e.md").read_text()
    assert "CPU SMOKE RUN: not a benchmark" in md
    assert md.count("| skipped: ") == len(GPU_ROWS) and "Goals:" in md
    assert "summary: 2 ok, 8 skipped, 0 failed;" in dry_run["proc"].stdout


def test_gpu_check_without_the_wheels_names_what_is_missing(image_venv: dict, tmp_path: Path) -> None:
    """The same venv without .whl/: the deps step fails (exit 7) naming open_clip and ftfy: the test above can fail."""
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    proc, out = _dry_run(image_venv, tmp_path / "run", "--skip-e2e", WEAKCLIP_WHEELS=str(empty))
    assert proc.returncode == 7, (proc.stdout + proc.stderr)[-3000:]
    deps = json.loads((out / "gpu_check.json").read_text())["steps"]["deps"]
    assert deps["result"] == "FAILED" and "missing: open_clip ftfy" in deps["note"], deps
