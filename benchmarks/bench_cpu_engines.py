"""CPU engines benchmark: WeakCLIP (random weights, the real ViT-B/16 architecture) at 512², PyTorch eager fp32 vs
ONNX Runtime (fp32, and int8 dynamic quantisation of the ViT linears), all in the same run on the same machine.

    python benchmarks/bench_cpu_engines.py                  # ViT-B/16, 512², 3 warm-up + 5 timed calls per engine
    python benchmarks/bench_cpu_engines.py --quick          # tiny preset (seconds), writes cpu_engines_quick.*

Every engine is measured in its own subprocess (``--worker``) so its peak RSS (VmHWM) is its own: the
process imports torch (every engine goes through the ``engines`` interface, which does), loads its model, runs the
warm-up and the timed calls.  Throughput = batch / median latency of the timed calls.  Parity: every worker saves its
logits for the same fixed input; the parent compares them with the eager fp32 logits (max |Δ|, argmax agreement).

Engines (``--engines``):
  torch-eager        WeakCLIP.forward(x, text_embeddings=T) with T precomputed, torch.inference_mode — the same
                     computation as the exported graph; the baseline of every speed-up
  torch-engine       engines/torch_engine.py as shipped (T computed once at construction, like the exported graph)
  onnxruntime        engines/ort_engine.py on weakclip.onnx: CPU EP, ORT_ENABLE_ALL, intra-op threads = cores
  onnxruntime-int8   the same graph after onnxruntime.quantization.quantize_dynamic of the ViT linears
                     (MatMul/Gemm with constant weights upstream of the visual projection; int8 weights, per channel)
  onnxruntime-int8-conv
                     additionally every Conv / ConvTranspose (adapter, neck, head: ~45 % of the FLOPs) statically
                     quantised (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on
                     ``--calib`` images: random normal inputs here, since the weights are random too; calibrate on
                     real images for a trained model), then the ViT linears dynamically as above

Writes ``<out>/cpu_engines.{json,md,png}`` (``--out``, default ./weakclip_bench/; ``make bench-cpu`` writes the
repository's ``benchmarks/results/``) and prints the machine (CPU model, cores, load average —
this machine may be shared — and the torch / onnxruntime versions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from weakclip.benchmarks.common import DEFAULT_OUT, machine_info, peak_rss_mib, usable_cores
from weakclip.export import quantize

ENGINES = ("torch-eager", "torch-engine", "onnxruntime", "onnxruntime-int8", "onnxruntime-int8-conv")
ONNX_FILES = {
    "onnxruntime": "weakclip.onnx",
    "onnxruntime-int8": "weakclip_int8.onnx",
    "onnxruntime-int8-conv": "weakclip_int8_conv.onnx",
}
DEFAULT_ENGINES = ENGINES
GOAL = 2.0  # ONNX Runtime crops/s over eager


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import weakclip
    from weakclip.export.to_onnx import ExportOptions, export_model

    torch.manual_seed(args.seed)
    overrides = {"crop_size": args.size} if args.quick else {}
    model = weakclip.build_model(args.preset, **overrides).eval()
    with torch.inference_mode():  # fp32 work per window (T precomputed, as in the exported graph)
        T = model.text_embeddings()
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(1, 3, args.size, args.size), text_embeddings=T)
    parts = {k.split(".")[-1]: sum(v.values()) / 1e9 for k, v in counter.get_flop_counts().items() if k.count(".") == 1}
    ckpt = work / "model.safetensors"
    weakclip.save_checkpoint(model, ckpt)
    log(f"model {args.preset} (random weights), checkpoint {ckpt.stat().st_size / 2**20:.0f} MB")
    t0 = time.perf_counter()
    export_model(model, work / "onnx", ExportOptions(graphs=("end_to_end",), check=False), source=str(ckpt))
    info: dict[str, Any] = {
        "export_s": round(time.perf_counter() - t0, 1),
        "gflop_per_window": round(counter.get_total_flops() / 1e9, 2),
        "gflop_by_part": {k: round(v, 2) for k, v in parts.items()},
    }
    log(f"{info['gflop_per_window']:.3g} GFLOP per {args.size}² window ({info['gflop_by_part']})")
    if "onnxruntime-int8" in args.engines:
        info["int8"] = quantize.quantize_vit_linears(work / "onnx" / "weakclip.onnx",
                                                     work / "onnx" / "weakclip_int8.onnx")  # fmt: skip
        log(f"int8 dynamic quantisation: {info['int8']['quantized_nodes']} ViT linears, {info['int8']['mb']:.0f} MB")
    if "onnxruntime-int8-conv" in args.engines:
        onnx_dir = work / "onnx"
        rng = np.random.default_rng(args.seed + 7)  # random weights: random calibration inputs
        calib = [rng.standard_normal((1, 3, args.size, args.size), dtype=np.float32) for _ in range(args.calib)]
        info["int8_conv"] = quantize.quantize_int8(onnx_dir / "weakclip.onnx",
                                                   onnx_dir / ONNX_FILES["onnxruntime-int8-conv"], calib)  # fmt: skip
        log(f"int8 static convs + dynamic ViT linears: {info['int8_conv']}")
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 1))
    np.save(work / "input.npy", x.numpy())
    return info


# ----------------------------------------------------------------------------------------------------------------
# one engine (worker subprocess)


def build_runner(engine: str, work: Path, threads: int) -> Callable[[Any], Any]:
    import torch

    torch.set_num_threads(threads)
    if engine == "torch-eager":
        import weakclip

        model = weakclip.load_checkpoint(work / "model.safetensors").eval()
        with torch.inference_mode():
            T = model.text_embeddings()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(x, text_embeddings=T).logits

        return run
    if engine == "torch-engine":
        from weakclip.engines.base import get_engine

        return get_engine("torch", work / "model.safetensors")
    if engine in ONNX_FILES:
        from weakclip.engines.base import get_engine

        file = work / "onnx" / ONNX_FILES[engine]
        return get_engine("onnxruntime", file, intra_op_threads=threads, reuse_outputs=True)
    raise SystemExit(f"unknown engine {engine!r}; choose from {ENGINES}")


def worker(engine: str, work: Path, threads: int, warmup: int, iters: int) -> dict[str, Any]:
    import torch

    rss_import = peak_rss_mib()
    t0 = time.perf_counter()
    run = build_runner(engine, work, threads)
    load_s = time.perf_counter() - t0
    x = torch.from_numpy(np.load(work / "input.npy"))
    first = run(x)
    np.save(work / f"logits_{engine}.npy", first.numpy().copy())
    for _ in range(max(0, warmup - 1)):
        run(x)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "engine": engine,
        "batch": int(x.shape[0]),
        "size": list(x.shape[-2:]),
        "threads": threads,
        "load_s": round(load_s, 2),
        "times_s": [round(t, 6) for t in times],
        "median_s": round(med, 6),
        "crops_per_s": round(x.shape[0] / med, 4),
        "peak_rss_mb": round(peak_rss_mib(), 1),
        "rss_after_imports_mb": round(rss_import, 1),
    }


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's rounds → one result: timed calls pooled (median over all), peak RSS the max."""
    times = [t for r in runs for t in r["times_s"]]
    med = statistics.median(times)
    out = dict(runs[0])
    out.update(
        times_s=times,
        median_s=round(med, 6),
        crops_per_s=round(runs[0]["batch"] / med, 4),
        peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
        rounds=len(runs),
    )
    return out


# ----------------------------------------------------------------------------------------------------------------
# report


def parity(work: Path, engine: str, reference: str = "torch-eager") -> dict[str, float] | None:
    a, r = work / f"logits_{engine}.npy", work / f"logits_{reference}.npy"
    if not (a.exists() and r.exists()):
        return None
    got, ref = np.load(a), np.load(r)
    return {
        "max_abs_diff": float(np.abs(got - ref).max()),
        "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    rows = report["results"]
    base = next((r for r in rows if r["engine"] == "torch-eager"), None)
    gflops = report["prepare"]["gflop_per_window"]
    lines = [
        f"# CPU engines: WeakCLIP {report['preset']} at {report['size']}², batch {report['batch']}",
        "",
        f"Machine: {m['cpu']} ({m['cpu_flags']}), {m['usable_cores']} usable cores, load average at start "
        f"{m['load_average']}; torch {m['torch']}, onnxruntime {m['onnxruntime']}.  "
        f"{report['rounds']} round(s) of {report['warmup']} warm-up + {report['iters']} timed calls per engine "
        f"(rounds alternate the engines; median over all timed calls), each engine in its own process, "
        f"{report['threads']} threads.",
        "",
        "| engine | crops/s | median latency (s) | speed-up vs eager | GFLOP/s (fp32 work / latency) | peak RSS (MB) "
        "| RSS after imports (MB) | max abs Δlogit vs eager | argmax agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sp = f"{r['crops_per_s'] / base['crops_per_s']:.2f}×" if base else "n/a"
        p = r.get("parity") or {}
        d = f"{p['max_abs_diff']:.2e}" if p else "n/a"
        agr = f"{100 * p['argmax_agreement']:.3f} %" if p else "n/a"
        lines.append(
            f"| {r['engine']} | {r['crops_per_s']:.3f} | {r['median_s']:.3f} | {sp} | {gflops * r['crops_per_s']:.0f} "
            f"| {r['peak_rss_mb']:.0f} "
            f"| {r['rss_after_imports_mb']:.0f} | {d} | {agr} |"
        )
    lines += [
        "",
        f"fp32 work per window: {gflops:.3g} GFLOP ({report['prepare']['gflop_by_part']}; torch FlopCounterMode, "
        "text embeddings precomputed).",
        "",
        f"Goal: ONNX Runtime ≥ {GOAL}× eager.  {report['verdict']}",
        "",
    ]
    return "\n".join(lines)


def bar_chart(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no PNG")
        return False
    rows = report["results"]
    names = [r["engine"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].bar(names, [r["crops_per_s"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("crops / s (higher is better)")
    axes[1].bar(names, [r["peak_rss_mb"] for r in rows], color="tab:orange")
    axes[1].set_ylabel("peak RSS (MB)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"WeakCLIP {report['preset']} {report['size']}² on {report['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def verdict(rows: list[dict[str, Any]]) -> str:
    by = {r["engine"]: r for r in rows}
    if "torch-eager" not in by:
        return "No eager baseline measured."
    base = by["torch-eager"]["crops_per_s"]
    parts = []
    for name in ONNX_FILES:
        if name in by:
            s = by[name]["crops_per_s"] / base
            parts.append(f"{name}: {s:.2f}× ({'meets' if s >= GOAL else 'below'} the goal)")
    return "; ".join(parts) + "."


# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset at 128² (a smoke run in seconds)")
    ap.add_argument("--preset", default=None, help="model preset (default vit_b16_voc; tiny with --quick)")
    ap.add_argument("--size", type=int, default=None, help="square window side (default 512; 128 with --quick)")
    ap.add_argument("--batch", type=int, default=1, help="windows per call")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5, help="timed calls per round (median over all rounds reported)")
    ap.add_argument("--rounds", type=int, default=1, help="measure every engine this many times, alternating")
    ap.add_argument("--threads", type=int, default=None, help="threads per engine (default: usable cores)")
    ap.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help=f"comma list from {','.join(ENGINES)}")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default ./{DEFAULT_OUT}/)")
    ap.add_argument("--workdir", default=None, help="keep the checkpoint / ONNX files here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", type=int, default=4, help="calibration inputs for the static int8 convolutions")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: measure one engine
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.preset = args.preset or ("tiny" if args.quick else "vit_b16_voc")
    args.size = args.size or (128 if args.quick else 512)
    args.threads = args.threads or usable_cores()
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        print(f"bench_cpu_engines: unknown engine(s) {unknown}; choose from {ENGINES}", file=sys.stderr)
        return 2
    if args.worker:
        res = worker(args.worker, Path(args.workdir), args.threads, args.warmup, args.iters)
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    machine = machine_info()
    log(
        f"machine: {machine['cpu']} [{machine['cpu_flags']}], {machine['usable_cores']} usable cores, load average "
        f"{machine['load_average']}; torch {machine['torch']}, onnxruntime {machine['onnxruntime']}"
    )
    with tempfile.TemporaryDirectory(prefix="weakclip-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        prep = prepare(args, work)
        results = []
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in args.engines}
        for rnd in range(args.rounds):  # rounds alternate the engines, so a burst of load hits all of them alike
            for engine in args.engines:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--workdir", str(work)]
                cmd += ["--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters)]
                cmd += ["--size", str(args.size), "--preset", args.preset]
                log(f"{engine} (round {rnd + 1}/{args.rounds}): {args.warmup} warm-up + {args.iters} timed calls")
                p = subprocess.run(cmd, capture_output=True, text=True)
                line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if p.returncode != 0 or line is None:
                    log(f"{engine}: FAILED (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(line[len("RESULT ") :])
                runs[engine].append(r)
                log(f"{engine}: median {r['median_s']:.3f} s of {r['times_s']}, peak RSS {r['peak_rss_mb']:.0f} MB")
        results = [pool(rs) for rs in runs.values() if rs]
        for r in results:
            log(f"{r['engine']}: {r['crops_per_s']:.3f} crops/s (median of {len(r['times_s'])} timed calls)")
        for r in results:
            r["parity"] = parity(work, r["engine"])
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "preset": args.preset,
        "size": args.size,
        "batch": args.batch,
        "warmup": args.warmup,
        "iters": args.iters,
        "rounds": args.rounds,
        "threads": args.threads,
        "machine": machine,
        "prepare": prep,
        "results": results,
        "verdict": verdict(results),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "cpu_engines_quick" if args.quick else "cpu_engines"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (out / f"{stem}.md").write_text(md)
    bar_chart(report, out / f"{stem}.png")
    print(md)
    log(f"wrote {out / stem}.{{json,md,png}}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
