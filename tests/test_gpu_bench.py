"""benchmarks/bench_gpu_e2e.py and benchmarks/gpu_check.sh on a CPU-only machine: the reduced modes run end to end
and honour their output contracts; the pure helpers (window counts, peak table, projections, goals) are right.

Nothing here measures a GPU: the GPU rows must come back *skipped with a reason*, never with a number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weakclip.benchmarks import bench_gpu_e2e as e2e

REPO = Path(__file__).resolve().parents[1]
GPU_ROWS = ("engine-fp16", "engine-bf16", "fused-fp16", "fused-bf16", "compile-fp16", "ort-cuda-fp32", "trt-fp16")


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if "__pycache__" not in p.parts}


# ----------------------------------------------------------------------------------------------------------------
# pure helpers


def test_protocol_windows_official_geometry() -> None:
    p = e2e.protocol_windows(512)
    assert p["views_12"] == 52 and p["single_scale"] == 2 and p["stride"] == 341


def test_dense_fp16_peak_table() -> None:
    assert e2e.dense_fp16_peak("NVIDIA H100 80GB HBM3") == ("H100 SXM", 989.4)
    assert e2e.dense_fp16_peak("NVIDIA H100 PCIe") == ("H100 PCIe", 756.5)
    assert e2e.dense_fp16_peak("NVIDIA H100 NVL") == ("H100 NVL", 835.5)
    assert e2e.dense_fp16_peak("NVIDIA H200") == ("H200 SXM", 989.4)
    assert e2e.dense_fp16_peak("NVIDIA A100-SXM4-80GB")[1] == 312.0
    assert e2e.dense_fp16_peak("NVIDIA GeForce RTX 4090") == (None, None)


def test_derived_figures() -> None:
    proto = {"views_12": 52, "single_scale": 2}
    d = e2e.derived(917.0, proto, 325.5, 989.4)
    assert d["images_per_s_12_views"] == pytest.approx(917 / 52)
    assert d["images_per_s_single_scale"] == pytest.approx(458.5)
    assert d["voc_train_aug_minutes_12_views"] == pytest.approx(10_582 * 52 / 917 / 60)
    assert d["gflop_per_s"] == pytest.approx(917 * 325.5)
    assert d["fraction_of_dense_fp16_peak"] == pytest.approx(917 * 325.5 / 989_400)
    assert e2e.derived(1.0, proto, 325.5, None)["fraction_of_dense_fp16_peak"] is None


def _row(key: str, wps: float, peak: float | None = 989.4) -> dict:
    return {"key": key, "status": "ok", "windows_per_s": wps, **e2e.derived(wps, {"views_12": 52, "single_scale": 2},
                                                                            325.5, peak)}  # fmt: skip


def test_goals() -> None:
    peak = ("H100 SXM", 989.4)
    met = e2e.evaluate_goals([_row("official-fp32", 50), _row("engine-fp16", 600), _row("trt-fp16", 1100)],
                             "NVIDIA H100 80GB HBM3", peak, smoke=False)  # fmt: skip
    assert [g["met"] for g in met] == [True, True, True]
    assert "12.00x" in met[0]["value"] and "trt-fp16" in met[1]["value"]
    missed = e2e.evaluate_goals([_row("official-fp32", 100), _row("engine-fp16", 500)], "NVIDIA H100 80GB HBM3",
                                peak, smoke=False)  # fmt: skip
    assert [g["met"] for g in missed] == [False, False, False]
    # not an H100 / unknown peak / missing rows: not evaluated, never "met"
    other = e2e.evaluate_goals([_row("engine-fp16", 2000, None)], "NVIDIA GeForce RTX 4090", (None, None), False)
    assert [g["met"] for g in other] == [None, None, None]
    assert "not an H100" in other[2]["note"] and "no dense fp16 peak" in other[1]["note"]
    skipped = [{"key": "engine-fp16", "status": "skipped", "reason": "x"}]
    assert [g["met"] for g in e2e.evaluate_goals(skipped, "NVIDIA H100 PCIe", peak, False)] == [None, None, None]


def test_process_gpu_memory_says_why_not() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible; the CPU-only message is what this checks")
    mib, source = e2e.process_gpu_memory_mib()
    assert mib is None and source.startswith("unavailable")


def test_bf16_runner_path_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The autocast runner shared by the bf16, fused and compile rows, on CPU (bf16 autocast exists there too)."""
    import weakclip

    torch.manual_seed(0)
    model = weakclip.build_model("tiny", crop_size=64).eval()
    with torch.inference_mode():
        T = model.text_embeddings()
        x = torch.randn(2, 3, 64, 64)
        ref = model(x, text_embeddings=T).logits
    args = e2e.build_parser().parse_args(["--out", "unused", "--warmup", "1", "--repeats", "2", "--iters", "1"])
    ctx = e2e.Ctx(args, torch.device("cpu"), True, model, T, x, ref, float("inf"), Path("unused"))
    monkeypatch.setattr(e2e.Ctx, "gpu", lambda self, what: None)
    row: dict = {}
    e2e.row_bf16(ctx, row)
    assert row["batch"] == 2 and row["windows_per_s"] > 0 and row["timing"]["repeats"] == 2
    assert 0.5 <= row["argmax_agreement"] <= 1.0 and row["max_abs_logit_diff"] > 0  # bf16 really ran
    with pytest.raises(e2e.RowSkipped, match="time budget"):
        e2e.Ctx(args, torch.device("cpu"), True, model, T, x, ref, 0.0, Path("unused")).need(10, "x")


# ----------------------------------------------------------------------------------------------------------------
# gpu_check.sh (dry run) and, through it, the e2e benchmark's CPU smoke run


GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
OUTPUT_NAMES = ("gpu_check", "gpu_e2e", "cuda_coattn", "parity_tests")


def _bash() -> str:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    return bash


def _stray_outputs() -> set[str]:
    """Files named like gpu_check's outputs anywhere in the checkout (outside .venv / .git)."""
    found = set()
    for top in REPO.iterdir():
        if top.name in (".venv", ".git") or not top.is_dir():
            continue
        found |= {str(p) for p in top.rglob("*") if p.name.startswith(OUTPUT_NAMES)}
    return found | {str(p) for p in REPO.glob("*") if p.name.startswith(OUTPUT_NAMES)}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``bash benchmarks/gpu_check.sh --out results --dry-run`` from an empty working directory, relative --out."""
    bash = _bash()
    base = tmp_path_factory.mktemp("gpu_check")
    cwd = base / "cwd"
    cwd.mkdir()
    before = _stray_outputs()
    env = dict(os.environ, PY=sys.executable, HF_HUB_OFFLINE="1")
    proc = subprocess.run([bash, str(GPU_CHECK), "--out", "results", "--dry-run"], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)  # fmt: skip
    return {"proc": proc, "cwd": cwd, "out": cwd / "results", "stray": _stray_outputs() - before}


def test_gpu_check_syntax() -> None:
    proc = subprocess.run([_bash(), "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_arguments(tmp_path: Path) -> None:
    bash = _bash()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([bash, str(GPU_CHECK), *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)

    missing = run()
    assert missing.returncode == 64 and "--out DIR is required" in missing.stderr and "Usage:" in missing.stderr
    assert run("--out", "o", "--bogus").returncode == 64
    assert run("--out", "o", "--time-limit", "abc").returncode == 64
    assert run("--out", "o", "--time-limit", "10").returncode == 64
    helped = run("--help")
    assert helped.returncode == 0 and "--dry-run" in helped.stdout and "set -uo" not in helped.stdout
    assert list(tmp_path.iterdir()) == [], "a usage error must not write outputs"


def test_gpu_check_without_gpu_exits_2(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the no-GPU exit is what this checks")
    proc = subprocess.run([_bash(), str(GPU_CHECK), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          env=dict(os.environ, PY=sys.executable), timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "o" / "gpu_check.json").read_text())
    assert report["exit_code"] == 2 and report["steps"]["device"]["result"] == "FAILED"
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: FAIL(rc 2)")


def test_gpu_check_dry_run_contract(dry_run: dict) -> None:
    proc, out = dry_run["proc"], dry_run["out"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in dry_run["cwd"].iterdir()) == ["results"], "wrote outside --out"
    assert not dry_run["stray"], f"outputs written into the checkout: {sorted(dry_run['stray'])}"
    names = {p.name for p in out.iterdir()}
    assert {"gpu_check.log", "gpu_check.json", "gpu_e2e.json", "gpu_e2e.md", "gpu_e2e.png", "build"} <= names, names
    assert (out / "build" / "generated" / "weakclip_plugin_names.h").is_file(), "the dry run configures CMake"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: DRY-RUN PASS") and f"outputs in {out}" in last, last
    assert last in (out / "gpu_check.log").read_text(), "the log must hold everything printed, summary included"
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {k: v["result"] for k, v in report["steps"].items()}
    expect_device = "ok" if torch.cuda.is_available() else "none"
    assert steps == {"device": expect_device, "build": "configured", "parity": "skipped", "kernel_bench": "skipped",
                     "e2e": "ok"}, report  # fmt: skip
    assert report["dry_run"] is True and report["exit_code"] == 0


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
        assert "not installed" in reason or "needs a CUDA GPU" in reason, reason
        assert "not installed" not in reason or package in reason
    assert [g["met"] for g in report["goals"]] == [None, None, None]  # nothing is "met" on a CPU

    md = (out / "gpu_e2e.md").read_text()
    assert "CPU SMOKE RUN: not a benchmark" in md
    assert md.count("| skipped: ") == len(GPU_ROWS) and "Goals:" in md
    assert "summary: 2 ok, 7 skipped, 0 failed" in dry_run["proc"].stdout


def test_e2e_out_is_required() -> None:
    with pytest.raises(SystemExit) as info:
        e2e.build_parser().parse_args(["--cpu-smoke"])
    assert info.value.code == 2
