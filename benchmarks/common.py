"""Shared helpers for the benchmark scripts: machine description, work per window, protocol windows, subprocess runs,
timing, result files and plots.  Results go under ``--out`` (default ``./weakclip_bench/``), never into the package.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_OUT = "weakclip_bench"  # relative to the current directory
VOC_TRAIN_AUG = 10_582  # images in VOC train_aug: the projections of "time to pseudo-label the training set"
PROTOCOL_IMAGE_HW = (375, 500)  # a 500×375 VOC image


def add_out_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"results folder (default ./{DEFAULT_OUT}/; the repository's committed results: benchmarks/results)",
    )


def machine_info() -> dict[str, Any]:
    """CPU model and the SIMD flags that matter for these kernels, cores, load, library versions, GPU."""
    import torch

    from weakclip.engines.base import usable_cores
    from weakclip.masks.cpu_features import detect

    cpu = detect()
    info: dict[str, Any] = {
        "cpu": cpu.model,
        "cpu_flags": " ".join(cpu.isas),  # weakclip.masks.cpu_features: the instruction sets the precision tiers use
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "platform": platform.platform(),
    }
    if importlib.util.find_spec("onnxruntime") is not None:
        info["onnxruntime"] = importlib.import_module("onnxruntime").__version__
    return info


def count_gflop(config: Any, size: int) -> dict[str, Any]:
    """{"total": GFLOP, "parts": {component: GFLOP}} of one size² window (text embeddings precomputed) of a config or
    preset, attention counted: on the meta device under no_grad, MHA fast path off and SDPA on its math backend, so
    every attention matmul is an aten op the flop counter sees (fused kernels would hide them)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    import weakclip

    cfg = weakclip.get_config(config) if isinstance(config, str) else config
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.device("meta"):
            m = weakclip.build_from_config(cfg).eval()
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            T = m.text_embeddings()
            counter = FlopCounterMode(display=False)
            with counter:
                m(torch.zeros(1, 3, size, size, device="meta"), text_embeddings=T)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    parts = {k.split(".")[-1]: sum(v.values()) / 1e9 for k, v in counter.get_flop_counts().items() if k.count(".") == 1}
    return {"total": counter.get_total_flops() / 1e9, "parts": parts}


def protocol_windows(crop: int) -> dict[str, int]:
    """Windows per 500×375 image at single scale and the official 12 views (6 ratios × flip; 2 and 52 at crop 512)."""
    from weakclip.masks.inference import InferenceOptions, view_size, window_grid
    from weakclip.model.config import OFFICIAL_SCALES

    o = InferenceOptions.for_crop(crop)

    def windows(ratio: float) -> int:
        return len(window_grid(*view_size(PROTOCOL_IMAGE_HW, ratio, o.base_size, o.max_long), o.crop, o.stride))

    return {
        "single_scale": windows(1.0),
        "views_12": 2 * sum(windows(r) for r in OFFICIAL_SCALES),
        "crop": crop,
        "stride": o.stride,
    }


def run_child(module: str, args: list[str], timeout: float = 3600) -> dict:
    """Run ``python -m module args`` in a fresh process (so its peak RSS is its own) and parse its last JSON line."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM; a child's ru_maxrss has its parent's as a floor)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_results(
    stem: str, payload: dict, table_md: str, out: str | os.PathLike[str] = DEFAULT_OUT
) -> tuple[Path, Path]:
    """``<out>/<stem>.json`` and ``<out>/<stem>.md`` (``out`` created), each written atomically."""
    from weakclip.data.io import write_text_atomic

    j = write_text_atomic(Path(out, f"{stem}.json"), json.dumps(payload, indent=2) + "\n")
    return j, write_text_atomic(j.with_suffix(".md"), table_md)


def time_calls(
    fn: Callable[[], Any], *, warmup: int, repeats: int, iters: int = 1, sync: Callable[[], Any] = lambda: None
) -> tuple[Any, float, list[float]]:
    """(first call's output, its seconds, seconds per call of each of ``repeats`` timed repeats of ``iters`` calls);
    ``warmup`` untimed calls in all, the first included."""

    def timed(n: int) -> float:  # outputs dropped at once, so a timed call never holds the previous one's memory
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    first = fn()
    sync()
    first_s = time.perf_counter() - t0
    timed(warmup - 1)
    return first, first_s, [timed(iters) / iters for _ in range(repeats)]


def fmt(v: Any, spec: str, na: str = "–") -> str:
    return na if v is None else format(v, spec)


def save_plot(
    path: Path, draw: Callable[[Any, list], Any], size: tuple[float, float] = (12, 4.2), ncols: int = 2, dpi: int = 110
) -> str | None:
    """A matplotlib figure of ``ncols`` axes drawn by ``draw(fig, axes)``, written atomically to ``path``; returns the
    reason there is no PNG, or None."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib not installed"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from weakclip.data.io import atomic_path

    fig, axes = plt.subplots(1, ncols, figsize=size, squeeze=False)
    draw(fig, list(axes[0]))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return None
