"""Benchmark the fused CUDA co-attention (libweakclip_coattn) against the PyTorch ``CoAttentionMatching`` module.

Default problem: the VOC deployment shape (E = 512, W = 256, 4 heads, 3 layers, K = 21, a 32×32 token grid) for B in
{1, 8}, fp32 and fp16; also the attention kernel alone against ``scaled_dot_product_attention``.  Writes
``cuda_coattn_<gpu>.{json,md}`` to ``--out`` after every row; rows cut by ``--time-budget`` are named (exit status 6).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def time_cuda(fn: Callable[[], object], warmup: int, iters: int) -> dict[str, float]:
    """Median / p10 / p90 milliseconds of ``fn`` on the current stream (CUDA events, synchronised)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p10_ms": times[int(0.1 * (len(times) - 1))],
        "p90_ms": times[int(0.9 * (len(times) - 1))],
    }


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Extra peak CUDA memory (MiB) allocated through torch while running ``fn`` once."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


class OutOfTime(Exception):
    """The --time-budget is spent: the rows measured so far are kept."""


def compare(args, torch_fn: Callable[[], object], fused_fn: Callable[[], object], spread: bool) -> dict:
    """Median milliseconds of both and the speed-up; with ``spread``, p10 / p90 and the extra peak memory too."""
    t_torch = time_cuda(torch_fn, args.warmup, args.iters)
    t_fused = time_cuda(fused_fn, args.warmup, args.iters)
    row: dict = {
        "torch_ms": t_torch["median_ms"],
        "fused_ms": t_fused["median_ms"],
        "speedup": t_torch["median_ms"] / t_fused["median_ms"],
    }
    if spread:
        row.update(
            torch_p10_p90_ms=[t_torch["p10_ms"], t_torch["p90_ms"]],
            fused_p10_p90_ms=[t_fused["p10_ms"], t_fused["p90_ms"]],
            torch_peak_mb=peak_memory_mb(torch_fn),
            fused_peak_mb=peak_memory_mb(fused_fn),
        )
    return row


def bench_coattention(ops, args, emit: Callable[[dict, str], None], check_time: Callable[[str], None]) -> None:
    from weakclip.model.coattention import CoAttentionMatching

    torch.manual_seed(0)
    base = CoAttentionMatching(args.embed_dim, args.width, args.heads, args.layers).eval()
    for dname in args.dtype:
        dtype = DTYPES[dname]
        module = copy.deepcopy(base).to(device="cuda", dtype=dtype)
        prepared = ops.prepare_weights(module, dtype, "cuda")
        for B in args.batch:
            check_time(f"coattention {dname} B={B}")
            gen = torch.Generator(device="cuda").manual_seed(B)
            E, h, w = args.embed_dim, args.grid, args.grid
            g, dense, T = (
                torch.randn(*shape, device="cuda", generator=gen).to(dtype)
                for shape in ((B, E), (B, E, h, w), (args.classes, E))
            )

            def torch_fn(module=module, g=g, dense=dense, T=T):
                with torch.inference_mode():
                    return module(g, dense, T)[0]

            def fused_fn(prepared=prepared, g=g, dense=dense, T=T):
                return ops.coattention(prepared, g=g, dense=dense, T=T)

            s_torch, s_fused = torch_fn(), fused_fn()
            torch.cuda.synchronize()
            max_diff = (s_torch.float() - s_fused.float()).abs().max().item()
            row = {"op": "coattention", "dtype": dname, "batch": B, "tokens": 1 + h * w, "classes": args.classes}
            row |= compare(args, torch_fn, fused_fn, spread=True) | {"max_abs_diff_S": max_diff}
            emit(
                row,
                f"coattention {dname} B={B}: torch {row['torch_ms']:.3f} ms, fused {row['fused_ms']:.3f} ms "
                f"(x{row['speedup']:.2f}), peak MiB {row['torch_peak_mb']:.1f} / {row['fused_peak_mb']:.1f}, "
                f"max |dS| {max_diff:.2e}",
            )


def bench_attention(ops, args, emit: Callable[[dict, str], None], check_time: Callable[[str], None]) -> None:
    hd = args.width // args.heads
    N = 1 + args.grid * args.grid
    for dname in args.dtype:
        dtype = DTYPES[dname]
        for B in args.batch:
            check_time(f"attention {dname} B={B}")
            gen = torch.Generator(device="cuda").manual_seed(10 + B)
            q, k, v = (torch.randn(B, N, args.heads, hd, device="cuda", generator=gen).to(dtype) for _ in range(3))
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, Dh) views, as the module passes them

            def sdpa(qt=qt, kt=kt, vt=vt):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)

            def fused(q=q, k=k, v=v):
                return ops.flash_attention(q, k, v)

            diff = (sdpa().transpose(1, 2).float() - fused().float()).abs().max().item()
            row = {"op": "self-attention (B, N, H, Dh)", "dtype": dname, "batch": B, "tokens": N}
            row |= compare(args, sdpa, fused, spread=False) | {"max_abs_diff": diff}
            emit(
                row,
                f"attention {dname} B={B} N={N}: sdpa {row['torch_ms']:.3f} ms, fused {row['fused_ms']:.3f} "
                f"ms, max |d| {diff:.2e}",
            )


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"# Fused CUDA co-attention vs PyTorch — {meta['device']}",
        "",
        f"torch {meta['torch']}, CUDA {meta['cuda']}, TF32 matmul {meta['allow_tf32']}, {meta['timestamp']}. "
        f"Config: E={meta['config']['embed_dim']}, W={meta['config']['width']}, heads={meta['config']['heads']}, "
        f"layers={meta['config']['layers']}, K={meta['config']['classes']}, grid {meta['config']['grid']}². "
        f"Median of {meta['config']['iters']} runs after {meta['config']['warmup']} warm-up runs.",
        "",
        "| op | dtype | B | N | PyTorch ms | fused ms | speed-up | PyTorch peak MiB | fused peak MiB | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['dtype']} | {r['batch']} | {r['tokens']} | {r['torch_ms']:.3f} | {r['fused_ms']:.3f} | "
            f"{r['speedup']:.2f}× | {r.get('torch_peak_mb', float('nan')):.1f} | {r.get('fused_peak_mb', float('nan')):.1f} | "
            f"{r.get('max_abs_diff_S', r.get('max_abs_diff')):.2e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32", "fp16"])
    p.add_argument("--grid", type=int, default=32, help="token grid side (32 for a 512 crop: N = 1025)")
    for flag, default in (("--classes", 21), ("--embed-dim", 512), ("--width", 256), ("--heads", 4), ("--layers", 3)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--lib", help="path to libweakclip_coattn.so (default: $WEAKCLIP_CUDA_LIB or build/)")
    p.add_argument("--out", required=True, help="folder for cuda_coattn_<gpu>.json / .md (created)")
    p.add_argument("--time-budget", type=float, help="seconds; rows that would start later are cut")
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    def check_time(what: str) -> None:
        if args.time_budget is not None and time.perf_counter() - t_start > args.time_budget:
            raise OutOfTime(what)

    if not torch.cuda.is_available():
        print("bench_cuda_coattn: no CUDA GPU visible to torch; nothing to benchmark", file=sys.stderr)
        return 2
    from weakclip.engines import cuda_ops

    try:
        ops = cuda_ops.load(args.lib)
    except cuda_ops.CudaOpsUnavailable as e:
        print(f"bench_cuda_coattn: {e}", file=sys.stderr)
        return 3
    device = torch.cuda.get_device_name()
    print(f"device: {device} (capability {torch.cuda.get_device_capability()}), library {ops.path}", flush=True)
    meta = {
        "device": device,
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "python": platform.python_version(),
        "library": str(ops.path),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {k: v for k, v in vars(args).items() if k not in ("lib", "out")},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_").lower()
    rows: list[dict] = []
    cut: list[str] = []

    def save() -> None:
        from weakclip.data.io import write_text_atomic

        write_text_atomic(
            out / f"cuda_coattn_{slug}.json", json.dumps({"meta": meta, "results": rows, "cut": cut}, indent=2) + "\n"
        )
        cut_line = f"\nCut by --time-budget: {cut[0]} and later.\n" if cut else ""
        write_text_atomic(out / f"cuda_coattn_{slug}.md", markdown(meta, rows) + cut_line)

    def emit(row: dict, message: str) -> None:
        rows.append(row)
        save()
        print(message, flush=True)

    try:
        bench_coattention(ops, args, emit, check_time)
        bench_attention(ops, args, emit, check_time)
    except OutOfTime as e:
        cut.append(str(e))
        save()
        print(f"bench_cuda_coattn: --time-budget {args.time_budget:g} s spent; cut at {e}", file=sys.stderr)
        return 6
    print(f"wrote {out / f'cuda_coattn_{slug}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
