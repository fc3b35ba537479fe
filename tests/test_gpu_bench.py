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
from weakclip.benchmarks import common

REPO = Path(__file__).resolve().parents[1]
GPU_ROWS = (
    "engine-fp16",
    "engine-bf16",
    "fused-fp16",
    "fused-bf16",
    "graph-fp16",
    "compile-fp16",
    "ort-cuda-fp32",
    "trt-fp16",
)


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if "__pycache__" not in p.parts}


# ----------------------------------------------------------------------------------------------------------------
# pure helpers


def test_protocol_windows_official_geometry() -> None:
    p = common.protocol_windows(512)
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
    return {
        "key": key,
        "status": "ok",
        "windows_per_s": wps,
        **e2e.derived(wps, {"views_12": 52, "single_scale": 2}, 325.5, peak),
    }


def test_goals() -> None:
    peak = ("H100 SXM", 989.4)
    met = e2e.evaluate_goals(
        [_row("official-fp32", 50), _row("engine-fp16", 600), _row("trt-fp16", 1100)],
        "NVIDIA H100 80GB HBM3",
        peak,
        smoke=False,
    )
    assert [g["met"] for g in met] == [True, True, True]
    assert "12.00x" in met[0]["value"] and "trt-fp16" in met[1]["value"]
    missed = e2e.evaluate_goals(
        [_row("official-fp32", 100), _row("engine-fp16", 500)], "NVIDIA H100 80GB HBM3", peak, smoke=False
    )
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
    row: dict = {"key": "engine-bf16"}
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


def stray_outputs() -> set[str]:
    """Files named like gpu_check's outputs anywhere in the checkout (outside its hidden folders: .venv, .git, ...)."""
    found = set()
    for top in REPO.iterdir():
        if top.name.startswith(".") or not top.is_dir():
            continue
        found |= {str(p) for p in top.rglob("*") if p.name.startswith(OUTPUT_NAMES)}
    return found | {str(p) for p in REPO.glob("*") if p.name.startswith(OUTPUT_NAMES)}


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
    proc = subprocess.run(
        [_bash(), str(GPU_CHECK), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PY=sys.executable),
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "o" / "gpu_check.json").read_text())
    assert report["exit_code"] == 2 and report["steps"]["device"]["result"] == "FAILED"
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: FAIL(rc 2)")


def test_e2e_out_is_required() -> None:
    with pytest.raises(SystemExit) as info:
        e2e.build_parser().parse_args(["--cpu-smoke"])
    assert info.value.code == 2


def test_e2e_rows_cut_by_the_time_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A spent --time-budget cuts the rows (status cut, reason), keeps the report; GPU rows still say why not."""
    assert e2e.main(["--out", str(tmp_path), "--cpu-smoke", "--time-budget", "0"]) == 0
    rows = {r["key"]: r for r in json.loads((tmp_path / "gpu_e2e.json").read_text())["rows"]}
    for key in ("official-fp32", "engine-fp32"):
        assert rows[key]["status"] == "cut" and rows[key]["cut"] is True and "time budget" in rows[key]["reason"]
        assert "windows_per_s" not in rows[key]
    assert rows["engine-fp16"]["status"] == "skipped" and "needs a CUDA GPU" in rows["engine-fp16"]["reason"]
    assert "| cut: time budget" in (tmp_path / "gpu_e2e.md").read_text()
    assert "cut by the time budget: official-fp32 engine-fp32" in capsys.readouterr().out


def test_gpu_check_time_limit_keeps_what_finished(tmp_path: Path) -> None:
    """--time-limit 30: the build (which leaves 180 s to the e2e benchmark) is cut, named, and the run says PARTIAL."""
    proc = subprocess.run(
        [_bash(), str(GPU_CHECK), "--out", str(tmp_path / "o"), "--dry-run", "--time-limit", "30"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PY=sys.executable),
        timeout=300,
    )
    assert proc.returncode == 6, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "o" / "gpu_check.json").read_text())
    assert report["status"] == "DRY-RUN PARTIAL(rc 6: time limit)" and report["exit_code"] == 6
    assert report["cut"][0] == "build" and report["steps"]["build"]["result"] == "cut", report
    assert "time limit" in report["steps"]["build"]["note"]
    assert report["steps"]["deps"]["result"] == "ok", "the steps before the cut are kept"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: DRY-RUN PARTIAL") and "| cut: build" in last, last


# ----------------------------------------------------------------------------------------------------------------
# gpu_results: a gpu_check.sh output folder -> benchmarks/results/gpu_* and the README's GPU rows (synthetic, FAKE)


FAKE_GPU = "FAKE GPU 0000 (synthetic test values)"


def _fake_out(folder: Path) -> Path:
    """A gpu_check.sh output folder with clearly fake values (no GPU measured anything)."""
    from weakclip.benchmarks import bench_gpu_e2e as e

    folder.mkdir(parents=True)
    proto = {"views_12": 52, "single_scale": 2, "crop": 512, "stride": 341}
    rows = []
    for key, wps in (("official-fp32", 10.0), ("engine-fp32", 40.0), ("engine-fp16", 500.0), ("graph-fp16", 800.0)):
        rows.append(
            {
                "key": key,
                "description": e.DESCRIPTIONS[key],
                "status": "ok",
                "windows_per_s": wps,
                "speedup": wps / 10.0,
                "peak_allocated_mib": 1111.0 + wps,
                "peak_reserved_mib": 2222.0 + wps,
                "argmax_agreement": 0.999,
                **e.derived(wps, proto, 325.5, 989.4),
            }
        )
    rows.append({"key": "compile-fp16", "description": "x", "status": "cut", "cut": True, "reason": "time budget: 3 s"})
    rows.append(
        {
            "key": "trt-fp16",
            "description": "x",
            "status": "skipped",
            "reason": "not available on this machine: tensorrt not installed",
        }
    )
    report = {
        "smoke": False,
        "preset": "vit_b16_voc",
        "size": 512,
        "batch": 16,
        "warmup": 3,
        "repeats": 5,
        "iters": 2,
        "gflop_per_window": 325.5,
        "protocol_windows": proto,
        "timestamp": "2000-01-01T00:00:00",
        "device": {"name": FAKE_GPU, "torch": "0.0.0-fake", "cuda": "0.0"},
        "rows": rows,
        "goals": [{"goal": "fake goal", "value": "80.00x", "met": True, "note": "fake"}],
    }
    (folder / "gpu_e2e.json").write_text(json.dumps(report))
    (folder / "gpu_e2e.md").write_text("# fake e2e\n")
    (folder / "gpu_e2e.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    coattn = {
        "meta": {"device": FAKE_GPU},
        "cut": [],
        "results": [
            {"op": "coattention", "dtype": "fp16", "batch": 8, "torch_ms": 2.0, "fused_ms": 0.5, "speedup": 4.0}
        ],
    }
    (folder / "cuda_coattn_fake_gpu_0000.json").write_text(json.dumps(coattn))
    (folder / "cuda_coattn_fake_gpu_0000.md").write_text("# fake kernel\n")
    (folder / "parity_tests.txt").write_text("42 passed\n")
    check = {
        "status": "PARTIAL(rc 6: time limit)",
        "exit_code": 6,
        "dry_run": False,
        "elapsed_s": 355,
        "time_limit_s": 360,
        "python": "python3",
        "cut": ["e2e:compile-fp16"],
        "steps": {
            "device": {"result": "ok", "note": "sm_90"},
            "build": {"result": "ok", "note": "sm_90 in 55s"},
            "parity": {"result": "ok", "note": "42 passed"},
            "e2e": {"result": "ok", "note": "fake"},
        },
    }
    (folder / "gpu_check.json").write_text(json.dumps(check))
    return folder


def test_gpu_results_from_a_synthetic_run(tmp_path: Path) -> None:
    from weakclip.benchmarks import gpu_results

    out = _fake_out(tmp_path / "OUT")
    readme, results = tmp_path / "README.md", tmp_path / "results"
    original = (REPO / "README.md").read_text()
    readme.write_text(original)
    assert gpu_results.main([str(out), "--readme", str(readme), "--results", str(results)]) == 0
    assert sorted(p.name for p in results.iterdir()) == [
        "gpu_check.json",
        "gpu_check.md",
        "gpu_coattn.json",
        "gpu_coattn.md",
        "gpu_e2e.json",
        "gpu_e2e.md",
        "gpu_e2e.png",
    ]
    assert (results / "gpu_e2e.png").read_bytes() == (out / "gpu_e2e.png").read_bytes()
    assert "| build | ok | sm_90 in 55s |" in (results / "gpu_check.md").read_text()
    text = readme.read_text()
    block = text.split("<!-- gpu-results:begin")[1].split("<!-- gpu-results:end -->")[0]
    assert f"**GPU: {FAKE_GPU}**" in block and "PARTIAL(rc 6: time limit) in 355 s of its 360 s limit" in block
    # windows/s and peak memory (allocated / reserved) per measured row; the others with their reasons
    assert "| graph-fp16 | CUDA graph replay" in block and "| 800.0 | 80.00× |" in block and "| 1911 / 3022 |" in block
    assert "compile-fp16 (cut: time budget: 3 s)" in block and "not available on this machine" in block
    assert (
        "coattention fp16 B=8: 0.500 ms vs 2.000 ms (4.00×)" in block and "Cut by the time limit: e2e:compile" in block
    )
    # the "Time to expect" table: the shipped fp16 engine and the fastest row, in place of the old GPU row
    gpu_rows = [ln for ln in text.splitlines() if ln.startswith("| GPU")]
    assert len(gpu_rows) == 2 and "engine-fp16" in gpu_rows[0] and "graph-fp16" in gpu_rows[1], gpu_rows
    assert gpu_rows[0] == (
        f"| GPU {FAKE_GPU}, engine-fp16: torch engine fp16 autocast, batched (`generate --device "
        "cuda --precision fp16`) | 500.0 | 0.004 | 0.10 | 0.7 min | 18.3 min |"
    )
    time_table = text.split(gpu_results.TIME_TABLE_HEADING)[1].split("\n\n")[1]
    assert gpu_rows[0] in time_table and time_table.splitlines()[-1] == gpu_rows[1]

    # nothing else of the README changed, and a second run changes nothing
    def strip(t: str) -> list[str]:
        t = t.split("<!-- gpu-results:begin")[0] + t.split("<!-- gpu-results:end -->")[1]
        return [ln for ln in t.splitlines() if not ln.startswith("| GPU")]

    assert strip(text) == strip(original)
    assert gpu_results.main([str(out), "--readme", str(readme), "--results", str(results)]) == 0
    assert readme.read_text() == text
    assert (REPO / "README.md").read_text() == original, "the test must not touch the real README"


def test_gpu_results_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from weakclip.benchmarks import gpu_results

    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    args = ["--readme", str(readme), "--results", str(tmp_path / "results")]
    assert gpu_results.main([str(tmp_path / "nothing"), *args]) == 2
    assert "not a folder" in capsys.readouterr().err
    out = _fake_out(tmp_path / "dry")
    check = json.loads((out / "gpu_check.json").read_text())
    (out / "gpu_check.json").write_text(json.dumps(dict(check, dry_run=True)))
    assert gpu_results.main([str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a --dry-run" in err and str(out / "gpu_check.json") in err
    (out / "gpu_check.json").write_text(json.dumps(check))
    readme.write_text("# no markers\n")
    assert gpu_results.main([str(out), *args]) == 2
    assert "gpu-results:begin" in capsys.readouterr().err
    assert not (tmp_path / "results").exists(), "nothing written when the README cannot take the results"
