"""Training step time and peak memory: WeakCLIP (frozen CLIP) vs full fine-tuning of the same model.

Each (preset, mode) runs in its own subprocess so its peak RSS is its own.  A step is forward + seed/aux losses +
backward + AdamW on random images and seeds (the CRF boundary loss, the same CPU work in both modes, is left out).
Writes ``<out>/training.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from weakclip.benchmarks import common


def child(preset: str, mode: str, steps: int, batch: int, crop: int | None) -> dict:
    import weakclip

    torch.manual_seed(0)
    overrides = {"crop_size": crop} if crop else {}
    model = weakclip.build_model(preset, **overrides).train()
    if mode == "full":
        model.requires_grad_(True)  # every CLIP weight trainable
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=3e-5)
    S, K = model.config.crop_size, model.config.num_classes
    x = torch.randn(batch, 3, S, S)
    seeds = torch.randint(0, K, (batch, S // 8, S // 8))
    times = []
    for i in range(steps + 1):  # first step is warm-up
        t0 = time.perf_counter()
        out = model(x)
        logits = torch.nn.functional.interpolate(out.logits, size=seeds.shape[-2:], mode="bilinear")
        loss = torch.nn.functional.cross_entropy(logits, seeds)
        s = torch.nn.functional.interpolate(out.score_map / 0.07, size=seeds.shape[-2:], mode="bilinear")
        loss = loss + 0.4 * torch.nn.functional.cross_entropy(s, seeds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return {
        "preset": preset,
        "mode": mode,
        "crop": S,
        "batch": batch,
        "step_s": statistics.median(times),
        "peak_rss_mib": common.peak_rss_mib(),
        "trainable": sum(p.numel() for p in params),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "vit_b16_voc"])
    for flag, default in (("--steps", 3), ("--batch", 1)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--crop", type=int, default=None, help="override the preset crop size")
    ap.add_argument("--child", nargs=2, metavar=("PRESET", "MODE"), help=argparse.SUPPRESS)
    common.add_out_argument(ap)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps, args.batch, args.crop)))
        return 0

    info = common.machine_info()
    print(f"machine: {info}")
    rows = []
    extra = ["--steps", str(args.steps), "--batch", str(args.batch)] + (["--crop", str(args.crop)] if args.crop else [])
    for preset in args.presets:
        for mode in ("weakclip", "full"):
            r = common.run_child("weakclip.benchmarks.bench_training", ["--child", preset, mode, *extra])
            print(f"{preset:12s} {mode:9s} step {r['step_s']:.3f} s  peak RSS {r['peak_rss_mib']:.0f} MiB")
            rows.append(r)
    lines = [
        "| preset | crop | batch | mode | trainable params | step (s) | peak RSS (MiB) | speed-up | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for preset in args.presets:
        w = next(r for r in rows if r["preset"] == preset and r["mode"] == "weakclip")
        f = next(r for r in rows if r["preset"] == preset and r["mode"] == "full")
        speed, mem = f["step_s"] / w["step_s"], w["peak_rss_mib"] / f["peak_rss_mib"]
        summary.append({"preset": preset, "speedup": speed, "memory_ratio": mem})
        for r in (w, f):
            lines.append(
                f"| {preset} | {r['crop']} | {r['batch']} | {r['mode']} | {r['trainable'] / 1e6:.2f} M | "
                f"{r['step_s']:.3f} | {r['peak_rss_mib']:.0f} | "
                + (f"{speed:.2f}× | {100 * mem:.0f} % |" if r is w else "1.00× | 100 % |")
            )
    md = "\n".join(lines) + f"\n\nMachine: {info['cpu']}, {info['usable_cores']} cores, torch {info['torch']}.\n"
    print(md)
    j, _ = common.write_results("training", {"machine": info, "rows": rows, "summary": summary}, md, args.out)
    common.save_plot(j.with_suffix(".png"), lambda fig, axes: _draw(fig, axes, rows, args.presets), (9, 3.5), dpi=100)
    print(f"wrote {j.with_suffix('')}.{{json,md,png}}")
    return 0


def _draw(fig: Any, axes: list[Any], rows: list[dict], presets: list[str]) -> None:
    for ax, key, label in ((axes[0], "step_s", "step time (s)"), (axes[1], "peak_rss_mib", "peak RSS (MiB)")):
        for j, mode in enumerate(("weakclip", "full")):
            vals = [next(r[key] for r in rows if r["preset"] == p and r["mode"] == mode) for p in presets]
            ax.bar([i + 0.4 * j for i in range(len(presets))], vals, width=0.4, label=mode)
        ax.set_xticks([i + 0.2 for i in range(len(presets))], presets)
        ax.set_ylabel(label)
        ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle("Training step: WeakCLIP (frozen CLIP) vs full fine-tuning, CPU")


if __name__ == "__main__":
    sys.exit(main())
