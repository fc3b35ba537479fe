"""End-to-end GPU benchmark of WeakCLIP pseudo-mask inference: ViT-B/16 (random weights, real architecture) at 512²
windows, every row measured in the same process on the same GPU.

Rows: ``DESCRIPTIONS``; the official-style row (fp32, one window per forward, the text tower per window) is the anchor
of every speed-up; a row that cannot run here says why instead of a number.  ``--cpu-smoke`` (automatic without a
CUDA GPU): tiny preset, GPU rows skipped.  Writes ``gpu_e2e.json`` (after every row), ``gpu_e2e.md`` and ``gpu_e2e.png``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weakclip.benchmarks import common
from weakclip.benchmarks.common import VOC_TRAIN_AUG, fmt

# Dense (no sparsity) fp16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets; first matching name wins.
DENSE_FP16_PEAK_TFLOPS: tuple[tuple[str, str, float], ...] = (
    ("H200 NVL", "H200 NVL", 835.5),
    ("H200", "H200 SXM", 989.4),
    ("H100 NVL", "H100 NVL", 835.5),
    ("H100 PCIe", "H100 PCIe", 756.5),
    ("H100", "H100 SXM", 989.4),  # "NVIDIA H100 80GB HBM3"
    ("A100", "A100 (SXM / PCIe)", 312.0),
)
GOAL_SPEEDUP = 10.0
GOAL_PEAK_FRACTION = 0.35
GOAL_VOC_MINUTES = 10.0
DESCRIPTIONS = {
    "official-fp32": "official-style PyTorch fp32 eager, 1 window/forward, text tower per window",
    "engine-fp32": "torch engine fp32, T precomputed, batched",
    "engine-fp16": "torch engine fp16 autocast, batched",
    "engine-bf16": "torch engine bf16 autocast, batched",
    "fused-fp16": "fp16 autocast + fused CUDA co-attention (fp16)",
    "fused-bf16": "bf16 autocast + fused CUDA co-attention (fp16; no bf16 kernel)",
    "graph-fp16": "CUDA graph replay of the fp16 autocast forward, batched",
    "compile-fp16": "torch.compile, fp16 autocast, batched",
    "ort-cuda-fp32": "ONNX Runtime CUDA EP, fp32 graph (CPU in/out)",
    "trt-fp16": "TensorRT fp16 (CPU in/out)",
}
ROWS = tuple(DESCRIPTIONS)
# Rough wall-time needs (s) of each row on an H100 / H200 (ViT-B/16, batch 16), for --time-budget.
ROW_NEEDS_S = {
    "official-fp32": 20.0,
    "engine-fp32": 15.0,
    "graph-fp16": 20.0,
    "compile-fp16": 120.0,
    "export": 120.0,
    "ort-cuda-fp32": 45.0,
    "trt-fp16": 200.0,
}
ROW_NEEDS_DEFAULT_S = 10.0
NOT_AVAILABLE = "not available on this machine"
COUNTS = {  # option: (default, CPU smoke default, what)
    "batch": (16, 2, "windows per batched call"),
    "warmup": (3, 1, "untimed calls per row"),
    "repeats": (5, 2, "timed repeats per row; the median is reported"),
    "iters": (2, 1, "calls per timed repeat"),
    "official_windows": (4, 1, "windows per timed repeat of the official-style row"),
}
VERDICT = {True: "MET", False: "NOT MET", None: "not evaluated"}


class RowSkipped(Exception):
    """The row cannot run here; the message is the reason shown in its place."""


class RowCut(RowSkipped):
    """The row no longer fits the time budget (status ``cut``)."""


def log(msg: str) -> None:
    print(f"[gpu-e2e] {msg}", flush=True)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def dense_fp16_peak(device_name: str) -> tuple[str | None, float | None]:
    """(table label, dense fp16 TFLOP/s) for a CUDA device name, or (None, None) when it is not in the table."""
    name = device_name.lower()
    return next(((label, tflops) for key, label, tflops in DENSE_FP16_PEAK_TFLOPS if key.lower() in name), (None, None))


def derived(windows_per_s: float, protocol: dict[str, int], gflop: float, peak_tflops: float | None) -> dict:
    """Per-row figures that follow from windows/s."""
    gflops = windows_per_s * gflop
    return {
        "images_per_s_12_views": windows_per_s / protocol["views_12"],
        "images_per_s_single_scale": windows_per_s / protocol["single_scale"],
        "voc_train_aug_minutes_12_views": VOC_TRAIN_AUG * protocol["views_12"] / windows_per_s / 60.0,
        "voc_train_aug_minutes_single_scale": VOC_TRAIN_AUG * protocol["single_scale"] / windows_per_s / 60.0,
        "gflop_per_s": gflops,
        "fraction_of_dense_fp16_peak": gflops / (peak_tflops * 1000.0) if peak_tflops else None,
    }


def evaluate_goals(rows: list[dict], device: str, peak: tuple[str | None, float | None], smoke: bool) -> list[dict]:
    """The three goals: each {"goal", "value", "met": True/False/None, "note"}; None = not evaluable here."""
    ok = {r["key"]: r for r in rows if r["status"] == "ok"}
    anchor, fp16 = ok.get("official-fp32"), ok.get("engine-fp16")
    best = max(ok.values(), key=lambda r: r["windows_per_s"], default=None)
    g1: dict[str, Any] = {"goal": f"fp16 batched >= {GOAL_SPEEDUP:g}x the official-style row (windows/s)"}
    if anchor and fp16:
        ratio = fp16["windows_per_s"] / anchor["windows_per_s"]
        g1.update(value=f"{ratio:.2f}x", met=ratio >= GOAL_SPEEDUP, note="engine-fp16 / official-fp32")
    else:
        g1.update(value=None, met=None, note="needs both the official-fp32 and engine-fp16 rows")
    g2: dict[str, Any] = {"goal": f"best engine >= {GOAL_PEAK_FRACTION:.0%} of the GPU's dense fp16 peak"}
    g3: dict[str, Any] = {
        "goal": f"VOC train_aug (10,582 images) at 12 views <= {GOAL_VOC_MINUTES:g} min of model time on one H100"
    }
    if best is None:
        return [g1] + [g | {"value": None, "met": None, "note": "no row measured"} for g in (g2, g3)]
    if peak[1] is None:
        table = ", ".join(lbl for _, lbl, _ in DENSE_FP16_PEAK_TFLOPS)
        g2.update(value=None, met=None, note=f"no dense fp16 peak known for {device!r} (table: {table})")
    else:
        frac = best["fraction_of_dense_fp16_peak"]
        g2.update(value=f"{frac:.1%} ({best['key']})", met=frac >= GOAL_PEAK_FRACTION, note=f"peak {peak[0]}")
    minutes = best["voc_train_aug_minutes_12_views"]
    g3["value"] = f"{minutes:.1f} min ({best['key']})"
    if "H100" in device and not smoke:
        g3.update(met=minutes <= GOAL_VOC_MINUTES, note=device)
    else:
        g3.update(met=None, note=f"measured on {device!r}, not an H100: projection only")
    return [g1, g2, g3]


def process_gpu_memory_mib() -> tuple[float | None, str]:
    """(MiB, source) of this process's GPU memory as NVML reports it (CUDA context + allocator cache + memory that
    ONNX Runtime / TensorRT allocate outside torch), or (None, why not)."""
    pid, unlisted = os.getpid(), "does not list this process (container PID namespace?)"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            used = [
                p.usedGpuMemory
                for i in range(pynvml.nvmlDeviceGetCount())
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))
                if p.pid == pid and p.usedGpuMemory is not None
            ]
            return (sum(used) / 2**20, "pynvml") if used else (None, f"unavailable: NVML {unlisted}")
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        pass
    except Exception as e:  # noqa: BLE001 - NVML errors: report, do not fail the benchmark
        return None, f"unavailable: pynvml failed ({e})"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, "unavailable: neither pynvml nor nvidia-smi"
    try:
        cmd = [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"unavailable: nvidia-smi failed ({e})"
    mib = [float(b) for a, b in (ln.split(",")[:2] for ln in out.splitlines() if "," in ln) if a.strip() == str(pid)]
    return (sum(mib), "nvidia-smi") if mib else (None, f"unavailable: nvidia-smi {unlisted}")


def agreement(logits: torch.Tensor, ref: torch.Tensor) -> dict:
    logits, ref = logits.detach().float().cpu(), ref.detach().float().cpu()
    return {
        "argmax_agreement": (logits.argmax(1) == ref.argmax(1)).double().mean().item(),
        "max_abs_logit_diff": (logits - ref).abs().max().item(),
    }


@dataclass
class Ctx:
    args: argparse.Namespace
    device: torch.device
    smoke: bool
    model: Any
    T: torch.Tensor
    x: torch.Tensor  # (B, 3, S, S) on the device
    ref: torch.Tensor  # fp32 reference logits of x (CPU)
    deadline: float
    tmp: Path
    onnx: Path | None = None  # the end-to-end export, made by the first row that needs it

    def need(self, seconds: float, what: str) -> None:
        left = self.deadline - time.perf_counter()
        if left < seconds:
            raise RowCut(
                f"time budget: {max(left, 0):.0f} s left of --time-budget "
                f"{self.args.time_budget:g} s, {what} needs about {seconds:.0f} s"
            )

    def gpu(self, what: str) -> None:
        if self.device.type != "cuda":
            raise RowSkipped(f"needs a CUDA GPU ({what}); CPU smoke mode")

    def need_row(self, row: dict, gpu: str | None = None) -> None:
        """Skip the row without a GPU when it needs one (``gpu``: for what); cut it when its ROW_NEEDS_S is not left."""
        if gpu:
            self.gpu(gpu)
        self.need(ROW_NEEDS_S.get(row["key"], ROW_NEEDS_DEFAULT_S), f"the {row['key']} row")


def _measure(ctx: Ctx, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, row: dict, iters: int = 0) -> None:
    """Seconds per call into ``row["timing"]``: the median (and spread) of the timed repeats, the first call (e.g. a
    compile) apart; peak memory (absolute and above what was allocated before: the shared model), and agreement with
    the fp32 logits when ``x`` is the full reference batch."""
    a, batch, iters, device = ctx.args, x.shape[0], iters or ctx.args.iters, ctx.device
    cuda = device.type == "cuda"
    sync = functools.partial(torch.cuda.synchronize, device) if cuda else lambda: None
    gc.collect()
    if cuda:
        sync()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    _, first, per = common.time_calls(lambda: fn(x), warmup=a.warmup, repeats=a.repeats, iters=iters, sync=sync)
    out = fn(x) if batch == ctx.x.shape[0] else None
    if cuda:
        sync()
        peak = torch.cuda.max_memory_allocated(device)
        row.update(peak_allocated_mib=peak / 2**20, peak_allocated_above_model_mib=(peak - base) / 2**20)
        row["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
        row["process_gpu_mib"], row["process_gpu_source"] = process_gpu_memory_mib()
    else:
        row.update(peak_rss_mib_process=common.peak_rss_mib(), process_gpu_source="unavailable: no GPU")
    med = statistics.median(per)
    t = {"median_s": med, "min_s": min(per), "max_s": max(per), "first_call_s": first}
    t.update(repeats=a.repeats, iters=iters, warmup=max(a.warmup, 1))
    row.update(batch=batch, timing=t, windows_per_s=batch / med, ms_per_window=1e3 * med / batch)
    if out is not None:
        row.update(agreement(out, ctx.ref))


def row_official(ctx: Ctx, row: dict) -> None:
    ctx.need_row(row)
    model, n = ctx.model, ctx.args.official_windows

    def one(x1: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x1).logits  # text_embeddings=None: prompt learner + text tower run for this window

    _measure(ctx, one, ctx.x[:1], row, iters=n)
    row.update(agreement(torch.cat([one(x1[None]) for x1 in ctx.x]), ctx.ref))


def row_engine(ctx: Ctx, row: dict, precision: str) -> None:
    from weakclip.engines.torch_engine import TorchEngine

    ctx.need_row(row, None if precision == "fp32" else f"{precision} autocast")
    _measure(ctx, TorchEngine(ctx.model, device=ctx.device, precision=precision), ctx.x, row)


def _autocast_runner(
    ctx: Ctx, model: Any, dtype: torch.dtype, no_grad: bool = False, cache: bool | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    T = ctx.T

    def run(x: torch.Tensor) -> torch.Tensor:
        grad = torch.no_grad() if no_grad else torch.inference_mode()
        with grad, torch.autocast(device_type=ctx.device.type, dtype=dtype, cache_enabled=cache):
            return model(x, text_embeddings=T).logits.float()

    return run


def row_bf16(ctx: Ctx, row: dict) -> None:
    ctx.need_row(row, "bf16 autocast")
    _measure(ctx, _autocast_runner(ctx, ctx.model, torch.bfloat16), ctx.x, row)


def row_fused(ctx: Ctx, row: dict, dtype: torch.dtype) -> None:
    """ctx.model with its co-attention replaced by the fused kernels (fp16) for the row."""
    from weakclip.engines import cuda_ops

    ctx.need_row(row, "the fused CUDA co-attention kernels")
    try:
        ops = cuda_ops.load(ctx.args.cuda_lib)
    except cuda_ops.CudaOpsUnavailable as e:
        raise RowSkipped(f"fused kernels not available: {str(e).splitlines()[0]}") from None
    original = ctx.model.coattention
    ctx.model.coattention = cuda_ops.FusedCoAttention(original, torch.float16, ops=ops)
    try:
        _measure(ctx, _autocast_runner(ctx, ctx.model, dtype), ctx.x, row)
    finally:
        ctx.model.coattention = original


def row_graph(ctx: Ctx, row: dict) -> None:
    """The fp16 autocast forward captured once in a CUDA graph, then replayed (input copied into the static buffer
    when it is another tensor).  Autocast's weight-cast cache is off: a capture must not keep casts made outside it."""
    ctx.need_row(row, "CUDA graph capture")
    device, forward = ctx.device, _autocast_runner(ctx, ctx.model, torch.float16, cache=False)
    static_x = ctx.x.clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(2):
            forward(static_x)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    t0 = time.perf_counter()
    try:
        with torch.cuda.graph(graph):
            static_out = forward(static_x)
    except Exception as e:  # noqa: BLE001 - a model that cannot be captured: say why instead of a number
        raise RowSkipped(
            f"CUDA graph capture does not apply: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        ) from None
    row["capture_s"] = time.perf_counter() - t0

    def replay(x: torch.Tensor) -> torch.Tensor:
        if x.data_ptr() != static_x.data_ptr():
            static_x.copy_(x)
        graph.replay()
        return static_out

    _measure(ctx, replay, static_x, row)


def row_compile(ctx: Ctx, row: dict) -> None:
    ctx.gpu("torch.compile of the fp16 engine")
    ctx.need(ROW_NEEDS_S["compile-fp16"], "torch.compile")
    torch._dynamo.reset()
    compiled = torch.compile(ctx.model)
    _measure(ctx, _autocast_runner(ctx, compiled, torch.float16, no_grad=True), ctx.x, row)
    row["compile_s"] = row["timing"]["first_call_s"]


def _export(ctx: Ctx) -> Path:
    """``weakclip.onnx`` of ctx.model in the temporary folder, exported once for the ORT and TensorRT rows (plus
    ``weakclip_fp16.onnx`` when TensorRT is strongly typed only)."""
    from weakclip.engines.base import EngineError
    from weakclip.engines.trt_build import import_tensorrt, strongly_typed_only
    from weakclip.export.core import ExportOptions
    from weakclip.export.pipeline import export_model

    if ctx.onnx is None:
        ctx.need(ROW_NEEDS_S["export"], "the ONNX export of the model")
        out = ctx.tmp / "onnx"
        try:  # a TensorRT that builds strongly typed networks only (11+) needs the fp16 graph too
            fp16 = strongly_typed_only(import_tensorrt("tensorrt"))
        except EngineError:
            fp16 = False
        t0 = time.perf_counter()
        options = ExportOptions(graphs=("end_to_end",), check=False, fp16=fp16)
        export_model(copy.deepcopy(ctx.model).cpu().float(), out, options)  # a CPU fp32 copy, dropped after
        log(f"exported the end-to-end graph{' (+ fp16 graph)' if fp16 else ''} in {time.perf_counter() - t0:.0f} s")
        ctx.onnx = out / "weakclip.onnx"
    return ctx.onnx


def row_ort(ctx: Ctx, row: dict) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        raise RowSkipped(f"{NOT_AVAILABLE}: onnxruntime not installed (pip install onnxruntime-gpu)") from None
    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have:
        raise RowSkipped(
            f"{NOT_AVAILABLE}: onnxruntime {ort.__version__} has no CUDAExecutionProvider ({have}; "
            "pip install onnxruntime-gpu)"
        )
    ctx.gpu("the ONNX Runtime CUDA execution provider")
    path = _export(ctx)
    ctx.need(ROW_NEEDS_S["ort-cuda-fp32"], "the ONNX Runtime row")
    from weakclip.engines.ort_engine import OrtEngine

    eng = OrtEngine(path, device=f"cuda:{ctx.device.index or 0}", reuse_outputs=True)
    row["providers"] = eng.providers
    _measure(ctx, eng, ctx.x.cpu(), row)


def row_trt(ctx: Ctx, row: dict) -> None:
    import importlib.util

    from weakclip.engines.base import EngineError
    from weakclip.engines.trt_build import import_tensorrt, trt_identity
    from weakclip.engines.trt_engine import TrtEngine

    try:
        trt = import_tensorrt("tensorrt")
    except EngineError as e:
        why = f"TensorRT is installed but does not load: {e}"
        if importlib.util.find_spec("tensorrt") is None:
            why = "tensorrt not installed (pip install tensorrt, TensorRT >= 10)"
        raise RowSkipped(f"{NOT_AVAILABLE}: {why}") from None
    ctx.gpu("TensorRT")
    path = _export(ctx)  # TensorRT 10: FP16 builder flag on this graph; 11: its weakclip_fp16.onnx sibling
    ctx.need(ROW_NEEDS_S["trt-fp16"], "the TensorRT fp16 engine build")
    size, batch = ctx.x.shape[-1], ctx.x.shape[0]
    t0 = time.perf_counter()
    eng = TrtEngine(
        path,
        precision="fp16",
        cache_dir=ctx.tmp / "trt_cache",
        max_batch=batch,
        opt_size=size,
        min_size=min(size, 256),
        device=ctx.device.index or 0,
    )
    row.update(build_s=time.perf_counter() - t0, tensorrt=trt_identity(trt))
    try:
        _measure(ctx, eng, ctx.x.cpu(), row)
    finally:
        eng.close()


RUNNERS: dict[str, Callable[[Ctx, dict], None]] = {
    "official-fp32": row_official,
    "engine-fp32": lambda c, r: row_engine(c, r, "fp32"),
    "engine-fp16": lambda c, r: row_engine(c, r, "fp16"),
    "engine-bf16": row_bf16,
    "fused-fp16": lambda c, r: row_fused(c, r, torch.float16),
    "fused-bf16": lambda c, r: row_fused(c, r, torch.bfloat16),
    "graph-fp16": row_graph,
    "compile-fp16": row_compile,
    "ort-cuda-fp32": row_ort,
    "trt-fp16": row_trt,
}


def device_info(device: torch.device) -> dict:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            name=p.name,
            capability=list(torch.cuda.get_device_capability(device)),
            memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
        if smi := shutil.which("nvidia-smi"):
            q = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
            info["driver"] = q.stdout.strip().splitlines()[0] if q.stdout.strip() else None
    else:
        m = common.machine_info()
        info.update(name=f"CPU: {m['cpu']}", usable_cores=m["usable_cores"])
    return info


def markdown(report: dict) -> str:
    d, proto = report["device"], report["protocol_windows"]
    lines = [
        f"# WeakCLIP end-to-end inference — {d['name']}"
        + (" (CPU SMOKE RUN: not a benchmark)" if report["smoke"] else ""),
        "",
        f"{report['preset']} (random weights) at {report['size']}² windows, batch {report['batch']}; torch "
        f"{d['torch']}{', CUDA ' + str(d.get('cuda')) if d.get('cuda') else ''}; every row in one process on this "
        f"device, median of {report['repeats']} repeats × {report['iters']} calls after {report['warmup']} warm-up "
        f"call(s), synchronised. Work per window: {report['gflop_per_window']:g} GFLOP (counted: "
        f"{report['gflop_per_window_counted']:.4g}). Dense fp16 peak: "
        + (f"{report['peak'][1]:g} TFLOP/s ({report['peak'][0]})" if report["peak"][1] else "unknown for this device")
        + f". Images/s at 12 views: {proto['views_12']} windows per 500×375 image (each counted as a full "
        f"window); single scale: {proto['single_scale']}. fp32 rows: TF32 off. {report['timestamp']}.",
        "",
        "| row | what | status | windows/s | × official | img/s (12 views) | img/s (1 scale) | VOC train_aug 12 views "
        "(min) | GFLOP/s | % fp16 peak | peak alloc MiB | peak reserved MiB | process GPU MiB | argmax agree | "
        "max Δlogit |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['key']} | {r['description']} | {r['status']}: {r['reason']} |" + " |" * 12)
            continue
        frac = r.get("fraction_of_dense_fp16_peak")
        lines.append(
            f"| {r['key']} | {r['description']} | ok | {r['windows_per_s']:.2f} | {fmt(r.get('speedup'), '.2f')} | "
            f"{r['images_per_s_12_views']:.3f} | {r['images_per_s_single_scale']:.2f} | "
            f"{r['voc_train_aug_minutes_12_views']:.1f} | {r['gflop_per_s']:.4g} | "
            f"{fmt(None if frac is None else 100 * frac, '.1f')} | {fmt(r.get('peak_allocated_mib'), '.0f')} | "
            f"{fmt(r.get('peak_reserved_mib'), '.0f')} | {fmt(r.get('process_gpu_mib'), '.0f')} | "
            f"{fmt(r.get('argmax_agreement'), '.4%')} | {fmt(r.get('max_abs_logit_diff'), '.2e')} |"
        )
    lines += ["", "Goals:", ""] + [
        f"* {g['goal']}: **{VERDICT[g['met']]}** — {g['value'] or '–'} ({g['note']})" for g in report["goals"]
    ]
    mem = {r.get("process_gpu_source") for r in report["rows"] if r["status"] == "ok"} - {None}
    lines += ["", f"Process GPU memory source: {', '.join(sorted(mem)) or 'none'}."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> str | None:
    """Bar chart of windows/s and peak memory per row; returns None or the reason there is no PNG."""
    rows = report["rows"]
    names = [r["key"] for r in rows]
    wps = [r.get("windows_per_s", 0.0) if r["status"] == "ok" else 0.0 for r in rows]
    mem = [r.get("peak_allocated_mib") or r.get("peak_rss_mib_process") or 0.0 for r in rows]
    reserved = [r.get("peak_reserved_mib") or 0.0 for r in rows]

    def draw(fig: Any, axes: list[Any]) -> None:
        bars = axes[0].bar(names, wps, color=["tab:gray" if r["status"] != "ok" else "tab:blue" for r in rows])
        for b, r in zip(bars, rows):
            if r["status"] != "ok":
                x = b.get_x() + b.get_width() / 2
                axes[0].text(x, 0, r["status"], rotation=90, ha="center", va="bottom", fontsize=7)
        axes[0].set_ylabel("windows / s (higher is better)")
        if any(reserved):
            axes[1].bar(names, reserved, color="tab:olive", label="max_memory_reserved")
        axes[1].bar(names, mem, color="tab:orange", label="max_memory_allocated" if any(reserved) else None)
        if any(reserved):
            axes[1].legend(fontsize=7)
        cpu = report["device"]["device"] == "cpu"
        axes[1].set_ylabel("peak RSS MiB (process)" if cpu else "peak GPU MiB (torch)")
        for ax in axes:
            ax.tick_params(axis="x", rotation=35, labelsize=7)
        title = f"WeakCLIP {report['preset']} {report['size']}², batch {report['batch']} — {report['device']['name']}"
        fig.suptitle(title + (" (CPU smoke run)" if report["smoke"] else ""), fontsize=9)

    return common.save_plot(path, draw)


def summary_line(report: dict) -> str:
    rows = report["rows"]
    n = {s: sum(r["status"] == s for r in rows) for s in ("skipped", "failed")}
    ok = [r for r in rows if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["windows_per_s"], default=None)
    best_text = f"{best['key']} {best['windows_per_s']:.1f} windows/s" if best else "none"
    goals = "; ".join(f"G{i + 1} {VERDICT[g['met']]}" for i, g in enumerate(report["goals"]))
    png = report["png"] or f"no PNG ({report['png_missing_reason']})"
    cut = [r["key"] for r in rows if r["status"] == "cut"]
    return (
        f"summary: {len(ok)} ok, {n['skipped']} skipped, {n['failed']} failed"
        f"{'; cut by the time budget: ' + ' '.join(cut) if cut else ''}; best "
        f"{best_text}; goals {goals}; wrote gpu_e2e.json, gpu_e2e.md, {png}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_e2e.json / .md / .png (created)")
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny preset, few iterations, GPU rows skipped (auto without a CUDA GPU)",
    )
    p.add_argument("--preset", help="model preset (default vit_b16_voc; tiny in CPU smoke mode)")
    p.add_argument("--size", type=int, help="window side (default: the preset's crop, 512)")
    for key, (full, smoke, what) in COUNTS.items():
        p.add_argument(_flag(key), type=int, help=f"{what} (default {full}; {smoke} in smoke)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run (default all)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=240.0,
        help="seconds for all rows, counted from the start; a row that no longer fits (ROW_NEEDS_S) is cut (status cut, "
        "with the reason)",
    )
    p.add_argument(
        "--gflop-per-window",
        type=float,
        help="work per window for GFLOP/s (default: the flop counter's, 325.5 for vit_b16_voc at 512)",
    )
    p.add_argument("--cuda-lib", help="libweakclip_coattn.so (default $WEAKCLIP_CUDA_LIB or build/)")
    p.add_argument("--device", default="cuda", help="CUDA device (default cuda = cuda:0)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    if smoke and not args.cpu_smoke:
        log("no CUDA GPU visible to torch: CPU smoke mode (tiny preset, GPU rows skipped); not a benchmark")
    preset = args.preset or ("tiny" if smoke else "vit_b16_voc")
    for key, (full, small, _) in COUNTS.items():
        if getattr(args, key) is None:
            setattr(args, key, small if smoke else full)
    if min(getattr(args, key) for key in COUNTS) < 1:
        print(f"bench_gpu_e2e: {', '.join(map(_flag, COUNTS))} must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu") if smoke else torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    t_start = time.perf_counter()

    import weakclip
    from weakclip.data.io import write_text_atomic

    # True fp32 for the fp32 rows and the reference (PyTorch's cuDNN default would allow TF32 convolutions).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)
    model = weakclip.build_model(preset, **({"crop_size": args.size} if args.size else {})).eval()
    size = model.config.crop_size
    counted = common.count_gflop(model.config, size)["total"]
    gflop = args.gflop_per_window or round(counted, 1)
    if abs(gflop - counted) > 0.02 * counted:
        log(f"note: --gflop-per-window {gflop:g} differs from the counted {counted:.1f} GFLOP per window")
    model = model.to(device)
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    with torch.inference_mode():
        T = model.text_embeddings()
        ref = model(x, text_embeddings=T).logits.float().cpu()
    info = device_info(device)
    peak = dense_fp16_peak(info["name"]) if device.type == "cuda" else (None, None)
    protocol = common.protocol_windows(size)
    log(
        f"{info['name']}: {preset} at {size}², batch {args.batch}, {gflop:g} GFLOP/window, protocol {protocol}, "
        f"dense fp16 peak {peak[1] or 'unknown'}"
    )

    report: dict[str, Any] = {
        "smoke": smoke,
        "preset": preset,
        "size": size,
        **{k: getattr(args, k) for k in ("batch", "warmup", "repeats", "iters", "official_windows", "seed")},
        "tf32": False,
        "gflop_per_window": gflop,
        "gflop_per_window_counted": counted,
        "peak": list(peak),
        "protocol_windows": protocol,
        "voc_train_aug_images": VOC_TRAIN_AUG,
        "device": info,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "time_budget_s": args.time_budget,
        "rows": [],
        "goals": [],
    }

    def save() -> None:
        write_text_atomic(out / "gpu_e2e.json", json.dumps(report, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="weakclip_gpu_e2e_") as tmp:
        ctx = Ctx(args, device, smoke, model, T, x, ref, t_start + args.time_budget, Path(tmp))
        for key in ROWS:
            row: dict[str, Any] = {"key": key, "description": DESCRIPTIONS[key]}
            if key not in args.rows:
                row.update(status="skipped", reason="not selected (--rows)")
            else:
                t0 = time.perf_counter()
                try:
                    RUNNERS[key](ctx, row)
                    row["status"] = "ok"
                except RowCut as e:
                    row.update(status="cut", cut=True, reason=str(e))
                except RowSkipped as e:
                    row.update(status="skipped", reason=str(e))
                except Exception as e:  # noqa: BLE001 - one failing row is reported, the others still run
                    reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                    row.update(status="failed", reason=reason, traceback=traceback.format_exc()[-3000:])
                row["row_wall_s"] = time.perf_counter() - t0
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            msg = row.get("reason", "")
            if row["status"] == "ok":
                row.update(derived(row["windows_per_s"], protocol, gflop, peak[1]))
                msg = f"{row['windows_per_s']:.2f} windows/s, agreement {fmt(row.get('argmax_agreement'), '.4%')}"
                if "peak_reserved_mib" in row:
                    msg += f", peak {row['peak_allocated_mib']:.0f} MiB allocated / {row['peak_reserved_mib']:.0f} MiB reserved"
            report["rows"].append(row)
            log(f"{key:14s} {row['status']:8s} {msg}")
            save()
    anchor = next((r for r in report["rows"] if r["key"] == "official-fp32" and r["status"] == "ok"), None)
    for r in report["rows"]:
        if anchor and r["status"] == "ok":
            r["speedup"] = r["windows_per_s"] / anchor["windows_per_s"]
    report["goals"] = evaluate_goals(report["rows"], info["name"], peak, smoke)
    report["wall_s"] = time.perf_counter() - t_start
    why = plot(report, out / "gpu_e2e.png")
    report.update(png=None if why else "gpu_e2e.png", png_missing_reason=why)
    save()
    md = markdown(report)
    write_text_atomic(out / "gpu_e2e.md", md)
    print(md)
    log(summary_line(report))
    return int(any(r["status"] == "failed" for r in report["rows"]))


if __name__ == "__main__":
    sys.exit(main())
