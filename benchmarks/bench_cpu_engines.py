"""CPU engines by precision tier: WeakCLIP (random weights, the real ViT-B/16 architecture) at 512², fp32 / bf16 /
int8 engines and their peers (torch.compile, TorchScript freezing), all in one run on one machine.  ``--quick``: the
tiny preset at 128² (mechanics only, seconds).

Every row (``ROWS``) runs in its own process, so its peak RSS is its own; parity is against the eager fp32 logits.  A
GEMM probe at the start and the end gives this machine's peak per tier.  Writes ``<out>/cpu_engines.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weakclip.benchmarks import common
from weakclip.benchmarks.common import VOC_TRAIN_AUG, fmt, peak_rss_mib
from weakclip.engines.base import usable_cores
from weakclip.export import quantize
from weakclip.masks import cpu_features

TIERS = ("fp32", "bf16", "int8")
GOALS = {"fp32": 1.3, "bf16": 2.5, "int8": 3.0}  # speed-up over eager fp32
MIN_AGREEMENT = 0.995  # argmax agreement with eager fp32 a row needs to count towards a goal / decision
GEMM_SHAPE = (1024, 768, 3072)  # M, K, N: one ViT-B/16 MLP matmul at 512² (1024 patch tokens)


@dataclass(frozen=True)
class Row:
    tier: str
    family: str  # torch | jit | compile | onnxruntime
    what: str
    shipped: bool  # an engine (configuration) users get today; the others are peers
    quick: bool = True  # in the --quick default set


ROWS: dict[str, Row] = {
    "torch-eager": Row("fp32", "torch", "PyTorch eager fp32, T precomputed (baseline)", False),
    "torch-engine": Row("fp32", "torch", "torch engine fp32", True),
    "onnxruntime": Row("fp32", "onnxruntime", "ONNX Runtime fp32", True),
    "jit-fp32": Row("fp32", "jit", "TorchScript trace + freeze, fp32", False),
    "compile-fp32": Row("fp32", "compile", "torch.compile inductor + freezing, fp32", False, quick=False),
    "torch-bf16": Row("bf16", "torch", "torch engine bf16 autocast, bf16 weights", True),
    "torch-bf16-autocast": Row("bf16", "torch", "torch engine bf16 autocast, fp32 weights", True),
    "torch-bf16-cl": Row("bf16", "torch", "torch engine bf16, bf16 weights, channels_last", True),
    "jit-bf16": Row("bf16", "jit", "TorchScript trace + freeze under bf16 autocast", False),
    "compile-bf16": Row("bf16", "compile", "torch.compile inductor + freezing, bf16 autocast", False, quick=False),
    "onnxruntime-int8": Row("int8", "onnxruntime", "ONNX Runtime, dynamic int8 ViT linears", True),
    "onnxruntime-int8-conv": Row(
        "int8", "onnxruntime", "ONNX Runtime, static int8 convs + dynamic int8 ViT linears (export --int8)", True
    ),
}
ENGINES = tuple(ROWS)
TIER_COLORS = {"fp32": "tab:blue", "bf16": "tab:green", "int8": "tab:orange"}
PART_LABELS = {"image_encoder": "ViT", "adapter": "adapter", "coattention": "co-attention", "decoder": "decoder"}
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


def derive(
    row: dict[str, Any], base: dict[str, Any] | None, gflop: float, probe: dict[str, Any], protocol: dict[str, int]
) -> None:
    """Per-row figures that follow from windows/s (in place)."""
    w = row["crops_per_s"]
    peak = (probe.get(row["tier"]) or {}).get("gflop_per_s")
    row.update(windows_per_s=w, speedup=w / base["crops_per_s"] if base else None, gflop_per_s=w * gflop)
    row["peak_fraction"] = row["gflop_per_s"] / peak if peak else None
    for key, windows in (("single_scale", protocol["single_scale"]), ("12_views", protocol["views_12"])):
        row[f"images_per_s_{key}"] = w / windows
        row[f"voc_hours_{key}"] = VOC_TRAIN_AUG * windows / w / 3600


def _agreement(r: dict[str, Any]) -> float | None:
    return (r.get("parity") or {}).get("argmax_agreement")


def _pct(r: dict[str, Any]) -> str:
    return f"{100 * (_agreement(r) or 0):.2f} %"


def _valid(r: dict[str, Any]) -> bool:
    """Measured natively, with a speed-up, at the agreement a goal needs."""
    a = _agreement(r)
    return r.get("speedup") is not None and not r.get("emulated") and a is not None and a >= MIN_AGREEMENT


def evaluate_goals(rows: list[dict[str, Any]], skipped: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per tier: the best row meeting the agreement bar, its speed-up, met or how far missed."""
    out = []
    bar = f"{100 * MIN_AGREEMENT:g} %"
    for tier, goal in GOALS.items():
        head = f"{tier} ≥ {goal:g}×"
        cands = [r for r in rows if r["tier"] == tier and r["engine"] != "torch-eager" and r.get("speedup")]
        ok = [r for r in cands if _valid(r)]
        g: dict[str, Any] = {"tier": tier, "goal": goal, "min_agreement": MIN_AGREEMENT}
        out.append(g)
        if not ok:  # every candidate falls short of the bar
            reasons = "; ".join(
                f"{r['engine']}: "
                + ("emulated (no native bf16)" if r.get("emulated") else f"agreement {_pct(r)} < {bar}")
                for r in cands
            )
            tier_skips = "; ".join(sorted({v for k, v in skipped.items() if ROWS[k].tier == tier}))
            g.update(met=None, text=f"{head}: not met — no row qualifies ({reasons})")
            if not cands:
                g["text"] = f"{head}: not measured — {tier_skips or 'no row of this tier ran'}"
            continue
        best = max(ok, key=lambda r: r["speedup"])
        s, name = best["speedup"], best["engine"]
        g.update(
            best=name, speedup=s, agreement=_agreement(best), met=s >= goal, shortfall=None if s >= goal else goal / s
        )
        if not ROWS[name].shipped:
            name += " (a peer, not a shipped engine)"
        g["text"] = f"{head}: met by {name} ({s:.2f}×, {_pct(best)})"
        if s < goal:
            g["text"] = (
                f"{head}: missed — best {name} {s:.2f}× is {100 * s / goal:.0f} % of the goal (needs {goal / s:.2f}× more)"
            )
        if shipped := [r for r in ok if ROWS[r["engine"]].shipped]:
            bs = max(shipped, key=lambda r: r["speedup"])
            g.update(best_shipped=bs["engine"], shipped_speedup=bs["speedup"], met_by_shipped=bs["speedup"] >= goal)
            if bs is not best:
                g["text"] += (
                    f"; best shipped engine {bs['engine']} {bs['speedup']:.2f}× "
                    f"({100 * bs['speedup'] / goal:.0f} % of the goal)"
                )
        if faster := [r for r in cands if not _valid(r) and not r.get("emulated") and r["speedup"] > s]:
            f = max(faster, key=lambda r: r["speedup"])
            g["text"] += f"; {f['engine']} is faster ({f['speedup']:.2f}×) but agrees only {_pct(f)} < {bar}"
    return out


def row_unavailable(engine: str, args: argparse.Namespace) -> str | None:
    """Why a row cannot run on this machine (None: it can)."""
    row = ROWS[engine]
    if row.family == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime not installed (pip install onnxruntime)"
    if row.tier == "bf16" and not args.force_bf16 and (why := cpu_features.missing_for("bf16")):
        return why
    if row.family == "compile" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile's CPU backend needs a C++ compiler (g++ / clang++), none on PATH"
    return None


def prepare(args: argparse.Namespace, work: Path, engines: list[str]) -> dict[str, Any]:
    import torch

    import weakclip

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.checkpoint:
        ckpt = Path(args.checkpoint).resolve()
        config = weakclip.load_checkpoint(ckpt).config
        log(f"checkpoint {ckpt} (crop {config.crop_size}, {len(config.class_names)} classes)")
    else:
        model = weakclip.build_model(args.preset, **({"crop_size": args.size} if args.quick else {})).eval()
        config = model.config
        ckpt = work / "model.safetensors"
        weakclip.save_checkpoint(model, ckpt)
        del model
        gc.collect()
        log(f"model {args.preset} (random weights), checkpoint {ckpt.stat().st_size / 2**20:.0f} MB")
    flops = common.count_gflop(config, args.size)
    info: dict[str, Any] = {
        "checkpoint": str(ckpt) if args.checkpoint else "random weights",
        "gflop_per_window": round(flops["total"], 2),
        "gflop_by_part": {k: round(v, 2) for k, v in flops["parts"].items()},
        "gflop_counted_with": "torch.utils.flop_counter, meta device, no_grad, MHA fast path off, SDPA math backend",
    }
    log(f"{info['gflop_per_window']:.4g} GFLOP per {args.size}² window ({info['gflop_by_part']})")
    paths = {"checkpoint": str(ckpt)}
    if any(ROWS[e].family == "onnxruntime" for e in engines):
        onnx_dir = work / "onnx"
        onnx_dir.mkdir(parents=True, exist_ok=True)
        if args.onnx:
            fp32 = Path(args.onnx).resolve()
        else:
            from weakclip.export.core import ExportOptions
            from weakclip.export.pipeline import export_model

            t = time.perf_counter()
            options = ExportOptions(graphs=("end_to_end",), check=False)
            export_model(weakclip.load_checkpoint(ckpt).eval(), onnx_dir, options, source=str(ckpt))
            fp32 = onnx_dir / "weakclip.onnx"
            info["export_s"] = round(time.perf_counter() - t, 1)
            log(f"ONNX export {info['export_s']} s")
        paths["onnxruntime"] = str(fp32)
        rng = np.random.default_rng(args.seed + 7)  # random weights: random calibration inputs
        calib = [rng.standard_normal((1, 3, args.size, args.size), dtype=np.float32) for _ in range(args.calib)]
        if "onnxruntime-int8" in engines:
            paths["onnxruntime-int8"] = str(dst := onnx_dir / "weakclip_int8.onnx")
            q = info["int8"] = quantize.quantize_vit_linears(fp32, dst)
            log(f"int8 dynamic quantisation: {q['quantized_nodes']} ViT linears, {q['mb']:.0f} MB")
        if "onnxruntime-int8-conv" in engines:
            paths["onnxruntime-int8-conv"] = str(dst := onnx_dir / "weakclip_int8_conv.onnx")
            info["int8_conv"] = quantize.quantize_int8(fp32, dst, calib)
            log(f"int8 static convs + dynamic ViT linears: {info['int8_conv']}")
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 1))
    np.save(work / "input.npy", x.numpy())
    (work / "paths.json").write_text(json.dumps(paths, indent=1))
    info["prepare_s"] = round(time.perf_counter() - t0, 1)
    return info


def _autocast(tier: str) -> Any:
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if tier == "bf16" else contextlib.nullcontext()


def build_runner(engine: str, work: Path, threads: int, force_bf16: bool) -> tuple[Callable[[Any], Any], dict]:
    """(run(x) -> logits, facts about the runner) for one row."""
    import torch

    from weakclip.engines.base import get_engine

    torch.set_num_threads(threads)
    paths = json.loads((work / "paths.json").read_text())
    row = ROWS[engine]
    facts: dict[str, Any] = {}
    if row.family == "onnxruntime":
        return get_engine("onnxruntime", paths[engine], intra_op_threads=threads, reuse_outputs=True), facts
    if row.family == "torch" and engine != "torch-eager":
        opts: dict[str, Any] = {}
        if row.tier == "bf16":
            opts = {"precision": "bf16", "check_isa": not force_bf16, "cast_weights": engine != "torch-bf16-autocast"}
            opts["channels_last"] = engine == "torch-bf16-cl"
        eng = get_engine("torch", paths["checkpoint"], **opts)
        facts["engine"] = eng.describe() | {"class_names": None}
        return eng, facts
    import weakclip

    model = weakclip.load_checkpoint(paths["checkpoint"]).eval()
    with torch.inference_mode():
        T = model.text_embeddings()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model
            self.register_buffer("T", T.clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x, text_embeddings=self.T).logits

    net = Logits().eval()
    fn: Callable[[torch.Tensor], torch.Tensor] = net
    if row.family == "jit":
        t = time.perf_counter()
        with torch.no_grad(), _autocast(row.tier):
            x0 = torch.from_numpy(np.load(work / "input.npy"))
            fn = torch.jit.freeze(torch.jit.trace(net, x0, check_trace=False))
        facts["trace_freeze_s"] = round(time.perf_counter() - t, 2)
    elif row.family == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        fn = torch.compile(net)
    grad = torch.inference_mode if engine == "torch-eager" else torch.no_grad

    def run(x: torch.Tensor) -> torch.Tensor:
        with grad(), _autocast(row.tier):
            return fn(x).float()

    return run, facts


def worker(engine: str, work: Path, threads: int, warmup: int, iters: int, force_bf16: bool) -> dict[str, Any]:
    import torch

    rss_import = peak_rss_mib()
    t0 = time.perf_counter()
    run, facts = build_runner(engine, work, threads, force_bf16)
    load_s = time.perf_counter() - t0
    x = torch.from_numpy(np.load(work / "input.npy"))
    first, first_s, times = common.time_calls(lambda: run(x), warmup=warmup, repeats=iters)
    np.save(work / f"logits_{engine}.npy", first.float().numpy().copy())
    med = statistics.median(times)
    return {
        "engine": engine,
        "batch": int(x.shape[0]),
        "size": list(x.shape[-2:]),
        "threads": threads,
        "load_s": round(load_s, 2),
        "first_call_s": round(first_s, 3),
        "times_s": [round(t, 6) for t in times],
        "median_s": round(med, 6),
        "crops_per_s": round(x.shape[0] / med, 4),
        "peak_rss_mb": round(peak_rss_mib(), 1),
        "rss_after_imports_mb": round(rss_import, 1),
        "facts": facts,
    }


def _best_gflops(fn: Callable[[], Any], flop: float, seconds: float) -> float:
    fn()
    best = float("inf")
    t_end = time.perf_counter() + seconds
    n = 0
    while n < 3 or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return flop / best / 1e9


def _ort_matmul_session(op: str, threads: int) -> Any:
    """An ONNX Runtime session of one GEMM_SHAPE ``MatMul`` (fp32) or ``MatMulInteger`` (u8 × s8 → s32) node, both
    inputs fed; None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    m, k, n = GEMM_SHAPE
    ta, tb, ty = (
        (TensorProto.FLOAT,) * 3 if op == "MatMul" else (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
    )
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        "probe",
        [helper.make_tensor_value_info("A", ta, [m, k]), helper.make_tensor_value_info("B", tb, [k, n])],
        [helper.make_tensor_value_info("Y", ty, [m, n])],
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def combine_probes(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """The peak per tier over several probe runs (start and end): the best (load only ever lowers a probe), with
    every run's figure kept."""
    out = dict(probes[0])
    for t in TIERS:
        best = max(probes, key=lambda p: p[t]["gflop_per_s"] or 0)[t]
        out[t] = dict(best, gflop_per_s=best["gflop_per_s"] or None, runs=[p[t]["gflop_per_s"] for p in probes])
    return out


def gemm_probe(threads: int, seconds: float) -> dict[str, Any]:
    """Achievable GEMM GFLOP/s on this machine per tier (best of repeated GEMM_SHAPE products)."""
    import torch

    torch.set_num_threads(threads)
    m, k, n = GEMM_SHAPE
    flop = 2.0 * m * k * n
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    out: dict[str, Any] = {"shape_mkn": [m, k, n], "threads": threads}
    fp32 = {"torch.mm": _best_gflops(lambda: torch.mm(a, b), flop, seconds)}
    sess = _ort_matmul_session("MatMul", threads)
    if sess is not None:
        feed = {"A": a.numpy(), "B": b.numpy()}
        fp32["onnxruntime MatMul"] = _best_gflops(lambda: sess.run(None, feed), flop, seconds)
    how = max(fp32, key=lambda k: fp32[k])
    out["fp32"] = {"gflop_per_s": fp32[how], "how": f"{how} fp32 (best of {', '.join(fp32)})", "all": fp32}
    if why := cpu_features.missing_for("bf16"):
        out["bf16"] = {"gflop_per_s": None, "how": f"n/a: {why}"}
    else:
        ab, bb = a.bfloat16(), b.bfloat16()
        out["bf16"] = {"gflop_per_s": _best_gflops(lambda: torch.mm(ab, bb), flop, seconds), "how": "torch.mm bf16"}
    isa = f"CPU's best int8 instruction set: {cpu_features.detect().int8_isa})"
    sess = _ort_matmul_session("MatMulInteger", threads)
    if sess is not None:
        rng = np.random.default_rng(0)
        feed = {"A": rng.integers(0, 256, (m, k), dtype=np.uint8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
        fn, how = (lambda: sess.run(None, feed)), f"ONNX Runtime MatMulInteger u8×s8 ({isa}"
    else:
        ai, bi = (torch.randint(-128, 128, shape, dtype=torch.int8, generator=g) for shape in ((m, k), (k, n)))
        fn, how = (lambda: torch._int_mm(ai, bi)), f"torch._int_mm (onnxruntime not installed; {isa}"
    out["int8"] = {"gflop_per_s": _best_gflops(fn, flop, seconds), "how": how}
    return out


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's rounds → one result: timed calls pooled (median over all), peak RSS the max."""
    times = [t for r in runs for t in r["times_s"]]
    med = statistics.median(times)
    peak = max(r["peak_rss_mb"] for r in runs)
    crops = round(runs[0]["batch"] / med, 4)
    return dict(runs[0], times_s=times, median_s=round(med, 6), crops_per_s=crops, peak_rss_mb=peak, rounds=len(runs))


def parity(work: Path, engine: str, reference: str = "torch-eager") -> dict[str, float] | None:
    a, r = work / f"logits_{engine}.npy", work / f"logits_{reference}.npy"
    if not (a.exists() and r.exists()):
        return None
    got, ref = np.load(a), np.load(r)
    if got.shape != ref.shape:
        return None
    return {
        "max_abs_diff": float(np.abs(got - ref).max()),
        "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
    }


def _na(v: Any, spec: str) -> str:
    return fmt(v, spec, "n/a")


def _share(v: Any, digits: int) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f} %"


def markdown(report: dict[str, Any]) -> str:
    m, cf, probe, proto = report["machine"], report["cpu_features"], report["probe"], report["protocol"]
    gflop, parts = report["prepare"]["gflop_per_window"], report["prepare"]["gflop_by_part"]
    lines = [
        f"# CPU engines by precision tier: WeakCLIP {report['preset']} at {report['size']}², batch {report['batch']}",
        "",
        f"Machine: **{cf['model']}** — instruction sets: {' '.join(cf['isas']) or 'none detected'} "
        f"(native bf16: {'yes' if cf['bf16'] else 'no'}; best int8: {cf['int8_isa']}; from {cf['source']}); "
        f"{m['usable_cores']} usable cores, load average {m['load_average']} at start, {m['load_average_end']} at "
        f"end; torch {m['torch']}, onnxruntime {m.get('onnxruntime', 'not installed')}.  "
        f"{report['rounds']} round(s) of {report['warmup']} warm-up + {report['iters']} timed calls per row, each row "
        f"in its own process, {report['threads']} threads; {report['elapsed_min']:.1f} min in all.",
        "",
        f"Work per window: **{gflop:.4g} GFLOP** ("
        + ", ".join(f"{PART_LABELS.get(k, k)} {v:.4g}" for k, v in parts.items())
        + f"; {report['prepare']['gflop_counted_with']}).  This machine's peak per tier, a GEMM probe "
        f"({'×'.join(map(str, probe['shape_mkn']))}, {probe['threads']} threads, run at the start and at the end of "
        "this run, the best counted): "
        + "; ".join(
            f"{t} {_na(probe[t]['gflop_per_s'], '.1f')} GFLOP/s"
            + (
                f" (runs: {', '.join(_na(v, '.1f') for v in probe[t].get('runs', []))})"
                if probe[t]["gflop_per_s"]
                else f" ({probe[t]['how'][5:]})"
            )
            for t in TIERS
        )
        + f".  fp32: {probe['fp32']['how']}; int8: {probe['int8']['how']}.",
        "",
        f"A 500×375 image is {proto['single_scale']} windows at single scale and {proto['views_12']} at the official 12 "
        f"views (crop {proto['crop']}, stride {proto['stride']}; every window counted as a full one); VOC train_aug = "
        f"{VOC_TRAIN_AUG:,} images.",
        "",
        "| tier | engine | what | windows/s | speed-up vs eager | goal | GFLOP/s | % of tier peak | images/s (1 scale) "
        "| images/s (12 views) | VOC train_aug h (1 scale / 12 views) | first call (s) | peak RSS (MB) | argmax "
        "agreement | max \\|Δlogit\\| | note |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        row = ROWS[r["engine"]]
        if r.get("skipped"):
            lines.append(f"| {row.tier} | {r['engine']} | {row.what} |" + " — |" * 12 + f" skipped: {r['skipped']} |")
            continue
        p = r.get("parity") or {}
        goal, sp = GOALS[row.tier], r.get("speedup")
        gtxt = "n/a" if sp is None else f"{goal:g}×: " + ("met" if sp >= goal else f"{100 * sp / goal:.0f} %")
        gtxt = "baseline" if r["engine"] == "torch-eager" else gtxt
        emu = " (emulated bf16)" if r.get("emulated") else ""
        note = "; ".join(f"{k} {v}" for k, v in (r.get("facts") or {}).items() if k != "engine")
        lines.append(
            f"| {row.tier} | {r['engine']}{emu} | {row.what} | {r['crops_per_s']:.3f} | {_na(sp, '.2f')}× | {gtxt} "
            f"| {r['gflop_per_s']:.0f} | {_share(r.get('peak_fraction'), 0)} "
            f"| {r['images_per_s_single_scale']:.3f} | {r['images_per_s_12_views']:.4f} "
            f"| {r['voc_hours_single_scale']:.1f} / {r['voc_hours_12_views']:.1f} | {r['first_call_s']:.2f} "
            f"| {r['peak_rss_mb']:.0f} | {_share(p.get('argmax_agreement'), 3)} "
            f"| {_na(p.get('max_abs_diff'), '.2e')} | {note} |"
        )
    lines += [
        "",
        f"**Goals** (speed-up over PyTorch eager fp32, each at ≥ {100 * MIN_AGREEMENT:g} % argmax agreement):",
        "",
    ]
    lines += [f"- {g['text']}" for g in report["goals"]] + [""]
    if report.get("notes"):
        lines += [f"- {n}" for n in report["notes"]] + [""]
    lines += ["## Compact table (the README's)", "", readme_table(report), ""]
    return "\n".join(lines)


def readme_table(report: dict[str, Any]) -> str:
    """The README's table: the measured rows with the figures a user decides by."""
    lines = [
        "| tier | engine | shipped | windows/s | vs eager fp32 | GFLOP/s (% of tier peak) | images/s, 1 scale / 12 views "
        "| VOC train_aug hours, 1 scale / 12 views | peak RSS (MB) | argmax agreement |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_reason: dict[str, list[str]] = {}
    for r in report["results"]:
        if r.get("skipped"):
            by_reason.setdefault(r["skipped"], []).append(r["engine"])
            continue
        row = ROWS[r["engine"]]
        shipped = "baseline" if r["engine"] == "torch-eager" else ("yes" if row.shipped else "peer")
        lines.append(
            f"| {row.tier} | {r['engine']} | {shipped} | {r['crops_per_s']:.3f} | {_na(r.get('speedup'), '.2f')}× "
            f"| {r['gflop_per_s']:.0f} ({_share(r.get('peak_fraction'), 0)}) "
            f"| {r['images_per_s_single_scale']:.3f} / {r['images_per_s_12_views']:.4f} "
            f"| {r['voc_hours_single_scale']:.1f} / {r['voc_hours_12_views']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {_share(_agreement(r), 2)} |"
        )
    if by_reason:
        lines += ["", "Not run here: " + "; ".join(f"{', '.join(e)} ({why})" for why, e in by_reason.items()) + "."]
    return "\n".join(lines)


def current_rows(report: dict[str, Any]) -> dict[str, Any]:
    """A finished run's report with only the rows this script still measures (an older JSON may have rows since
    removed) and its goals evaluated on them."""
    results = [r for r in report["results"] if r["engine"] in ROWS]
    skipped = {r["engine"]: r["skipped"] for r in results if r.get("skipped")}
    goals = evaluate_goals([r for r in results if not r.get("skipped")], skipped)
    return {**report, "results": results, "goals": goals}


def write_report(report: dict[str, Any], out: Path, stem: str) -> str:
    """``<out>/<stem>.{json,md,png}`` from a report (each written atomically)."""
    md = markdown(report)
    common.write_results(stem, report, md, out)
    rows = [r for r in report["results"] if not r.get("skipped") and r.get("speedup") is not None]
    colors = [TIER_COLORS[r["tier"]] for r in rows]
    names = [r["engine"] for r in rows]

    def draw(fig: Any, axes: list[Any]) -> None:
        axes[0].bar(names, [r["speedup"] for r in rows], color=colors)
        for tier, goal in GOALS.items():
            axes[0].axhline(goal, color=TIER_COLORS[tier], ls="--", lw=1, label=f"{tier} goal {goal:g}×")
        axes[0].set_ylabel("speed-up vs eager fp32 (higher is better)")
        axes[0].legend(fontsize=7)
        axes[1].bar(names, [r["peak_rss_mb"] for r in rows], color=colors)
        axes[1].set_ylabel("peak RSS (MB)")
        for ax in axes:
            ax.tick_params(axis="x", rotation=35, labelsize=7)
            for lbl in ax.get_xticklabels():
                lbl.set_ha("right")
        cf = report["cpu_features"]
        fig.suptitle(
            f"WeakCLIP {report['preset']} {report['size']}² on {cf['model']} ({' '.join(cf['isas'])})", fontsize=9
        )

    if rows and (why := common.save_plot(out / f"{stem}.png", draw)):
        log(f"{why}: no PNG")
    return md


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset at 128² (a smoke run: mechanics, not speed)")
    ap.add_argument("--preset", help="model preset (default vit_b16_voc; tiny with --quick)")
    for flag, default, what in (
        ("--size", None, "square window side (default 512; 128 with --quick)"),
        ("--batch", 1, "windows per call"),
        ("--warmup", None, "warm-up calls per row (default 3; 1 with --quick)"),
        ("--iters", None, "timed calls per round (default 5; 3 with --quick; median over all rounds)"),
        ("--rounds", 1, "measure every row this many times, alternating"),
        ("--threads", None, "threads per row (default: usable cores)"),
    ):
        ap.add_argument(flag, type=int, default=default, help=what)
    ap.add_argument("--engines", help=f"comma list from {','.join(ENGINES)} (default: all; --quick: all but compile-*)")
    common.add_out_argument(ap)
    ap.add_argument("--workdir", help="keep the checkpoint / ONNX files here (default: a temp dir)")
    ap.add_argument("--checkpoint", help="benchmark this WeakCLIP checkpoint instead of a random-weight preset")
    ap.add_argument("--onnx", help="its exported end-to-end weakclip.onnx (default: export it here)")
    ap.add_argument(
        "--force-bf16",
        action="store_true",
        help="run the bf16 rows on a CPU without native bf16 (emulated: mechanics only, never counted "
        "towards a goal or decision)",
    )
    ap.add_argument("--probe-seconds", type=float, help="time per GEMM probe (default 2; 0.3 quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", type=int, help="calibration inputs for static int8 (default 4; 2 quick)")
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="write the Markdown and plot of a finished run's JSON again under --out (no measuring)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one row / the probe
    return ap


def _run_worker(args: argparse.Namespace, what: str, work: Path) -> tuple[dict[str, Any] | None, str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", what, "--workdir", str(work)]
    for key in ("threads", "warmup", "iters", "size", "preset", "probe_seconds"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--force-bf16"] * args.force_bf16
    p = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return None, f"failed (exit {p.returncode}): {err[-1] if err else 'no output'}"
    return json.loads(line[len("RESULT ") :]), ""


def _probe_text(probe: dict[str, Any], unit: str = "") -> str:
    return ", ".join(f"{t} {_na(probe[t]['gflop_per_s'], '.1f')}{unit}" for t in TIERS)


def run_probe(args: argparse.Namespace, work: Path, when: str) -> dict[str, Any]:
    """The GEMM probe in its own process (``when``: "start" / "end" of the run)."""
    log(f"GEMM probe at the {when} ({args.probe_seconds:g} s per kernel)")
    probe, err = _run_worker(args, "gemm-probe", work)
    if probe is None:
        log(f"GEMM probe {err}")
        probe = {t: {"gflop_per_s": None, "how": f"n/a: probe {err}"} for t in TIERS}
        probe.update(shape_mkn=list(GEMM_SHAPE), threads=args.threads)
    log(f"GEMM probe ({when}): " + _probe_text(probe, " GFLOP/s"))
    return probe


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaults = {"preset": ("vit_b16_voc", "tiny"), "size": (512, 128), "warmup": (3, 1), "iters": (5, 3)}
    for key, (full, quick) in (defaults | {"calib": (4, 2), "probe_seconds": (2.0, 0.3)}).items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.threads = args.threads or usable_cores()
    if args.render:  # re-render the Markdown / plot of a finished run (no measuring)
        src = Path(args.render)
        print(write_report(current_rows(json.loads(src.read_text())), Path(args.out), src.stem))
        return 0
    if args.worker:
        if args.worker == "gemm-probe":
            res = gemm_probe(args.threads, args.probe_seconds)
        else:
            res = worker(args.worker, Path(args.workdir), args.threads, args.warmup, args.iters, args.force_bf16)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if args.engines is None:
        engines = [e for e in ENGINES if ROWS[e].quick or not args.quick]
    else:
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if unknown := sorted(set(engines) - set(ENGINES)):
        print(f"bench_cpu_engines: unknown engine(s) {unknown}; choose from {ENGINES}", file=sys.stderr)
        return 2
    if "torch-eager" not in engines:
        engines.insert(0, "torch-eager")  # the baseline and reference of every row

    t_start = time.perf_counter()
    machine = common.machine_info()
    feats = cpu_features.detect()
    no_bf16 = cpu_features.missing_for("bf16")
    log(
        f"machine: {feats.summary()}, native bf16: {'yes' if feats.bf16 else 'no'}, best int8: {feats.int8_isa}; "
        f"{machine['usable_cores']} usable cores, load average {machine['load_average']}; torch {machine['torch']}, "
        f"onnxruntime {machine.get('onnxruntime')}"
    )
    notes = []
    if args.quick:
        notes.append(
            "--quick: tiny model at 128², mechanics only — the speeds and agreements say nothing about "
            "ViT-B/16 (random tiny weights; agreement on near-tied random logits is low)"
        )
        if args.engines is None:
            notes.append(
                "--quick leaves out compile-fp32 / compile-bf16 (inductor compiles for minutes); name them "
                "in --engines to include them"
            )
    if args.force_bf16 and no_bf16:
        notes.append(f"--force-bf16: bf16 rows ran emulated ({no_bf16}); they count towards no goal or decision")
    skipped = {e: why for e in engines if (why := row_unavailable(e, args))}
    for e, why in skipped.items():
        log(f"{e}: skipped — {why}")
    runnable = [e for e in engines if e not in skipped]

    with tempfile.TemporaryDirectory(prefix="weakclip-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        prep = prepare(args, work, runnable)
        probes = [run_probe(args, work, "start")]
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in runnable}
        for rnd in range(args.rounds):  # rounds alternate the rows, so a burst of load hits all of them alike
            for engine in runnable:
                log(f"{engine} (round {rnd + 1}/{args.rounds}): {args.warmup} warm-up + {args.iters} timed calls")
                r, err = _run_worker(args, engine, work)
                if r is None:
                    log(f"{engine}: {err}")
                    skipped.setdefault(engine, err)
                    continue
                runs[engine].append(r)
                log(
                    f"{engine}: median {r['median_s']:.3f} s of {r['times_s']}, first call {r['first_call_s']:.2f} s, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB"
                )
        probes.append(run_probe(args, work, "end"))
        probe = combine_probes(probes)
        log("GEMM peak (best of start / end): " + _probe_text(probe))
        measured = {e: pool(rs) for e, rs in runs.items() if rs}
        base, protocol = measured.get("torch-eager"), common.protocol_windows(args.size)
        for e, r in measured.items():
            r.update(tier=ROWS[e].tier, emulated=ROWS[e].tier == "bf16" and no_bf16 is not None, parity=parity(work, e))
            derive(r, base, prep["gflop_per_window"], probe, protocol)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results = [
        measured.get(e) or {"engine": e, "tier": ROWS[e].tier, "skipped": skipped.get(e, "not run")} for e in engines
    ]
    measured_rows = [r for r in results if not r.get("skipped")]
    goals = evaluate_goals(measured_rows, skipped)
    report = {
        **{k: getattr(args, k) for k in ("preset", "size", "batch", "warmup", "iters", "rounds", "threads")},
        "quick": bool(args.quick),
        "machine": machine,
        "cpu_features": feats.to_dict(),
        "prepare": prep,
        "probe": probe,
        "protocol": protocol,
        "voc_train_aug_images": VOC_TRAIN_AUG,
        "goals": goals,
        "min_agreement": MIN_AGREEMENT,
        "results": results,
        "rows": {e: {"tier": r.tier, "what": r.what, "shipped": r.shipped} for e, r in ROWS.items()},
        "notes": notes,
        "elapsed_min": (time.perf_counter() - t_start) / 60,
    }
    out = Path(args.out)
    stem = "cpu_engines_quick" if args.quick else "cpu_engines"
    print(write_report(report, out, stem))
    for g in goals:
        log(f"goal {g['text']}")
    for r in measured_rows:
        log(
            f"{r['engine']}: {r['images_per_s_single_scale']:.3f} images/s single scale, "
            f"{r['images_per_s_12_views']:.4f} images/s at 12 views → VOC train_aug {r['voc_hours_single_scale']:.1f} h "
            f"/ {r['voc_hours_12_views']:.1f} h"
        )
    log(f"wrote {out / stem}.{{json,md,png}} ({report['elapsed_min']:.1f} min)")
    return 0 if base is not None else 1


if __name__ == "__main__":
    sys.exit(main())
