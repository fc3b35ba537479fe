"""Does a precision tier change the pseudo masks?  The trained demo model's masks from every CPU tier, scored against
the synthetic ground truth: mIoU per engine and its change from the PyTorch fp32 masks (goal: ≤ 0.3 points).
Needs a finished ``weakclip demo`` folder (``--demo``, default demo_out/).

Each row is ``weakclip generate`` on the demo's training images (single scale); int8 is what ``weakclip export --int8``
writes.  Writes ``<out>/tier_masks.{json,md,png}``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weakclip.benchmarks.common import add_out_argument, machine_info, save_plot, write_results
from weakclip.data.io import write_text_atomic
from weakclip.engines.generate import EngineSpec
from weakclip.errors import ArgumentParser, UsageError, cli
from weakclip.masks import cpu_features

MAX_MIOU_CHANGE = 0.3  # points; the tier goal on the trained demo model
TIER = {"torch-fp32": "fp32", "onnxruntime-fp32": "fp32", "torch-bf16": "bf16", "onnxruntime-int8": "int8"}
ROWS = tuple(TIER)


def log(msg: str) -> None:
    print(f"[tier-masks] {msg}", flush=True)


def mask_agreement(a_dir: Path, b_dir: Path, names: Sequence[str]) -> float:
    """Fraction of pixels with the same label in ``a_dir/<name>.png`` and ``b_dir/<name>.png`` over ``names``."""
    from weakclip.data.io import read_mask

    same = total = 0
    for n in names:
        a, b = read_mask(a_dir / f"{n}.png"), read_mask(b_dir / f"{n}.png")
        same += int((a == b).sum())
        total += a.size
    return same / total if total else float("nan")


def engine_spec(row: str, files: dict[str, Path], emulate_bf16: bool) -> EngineSpec:
    """The engine of one row (what ``weakclip generate --engine … --model … --precision …`` would build)."""
    engine, precision = row.split("-")
    model = "checkpoint" if engine == "torch" else ("onnx_int8" if precision == "int8" else "onnx")
    extra = {"check_isa": False} if row == "torch-bf16" and emulate_bf16 else {}
    return EngineSpec(str(files[model]), engine, {"precision": precision, **extra})


def markdown(report: dict[str, Any]) -> str:
    cf = report["cpu_features"]
    lines = [
        f"# Pseudo masks by precision tier: the trained demo model ({report['images']} synthetic training images, "
        "single scale)",
        "",
        f"Machine: **{cf['model']}** ({' '.join(cf['isas']) or 'no listed instruction sets'}; native bf16: "
        f"{'yes' if cf['bf16'] else 'no'}).  Model: `{report['checkpoint']}`.  Goal: |ΔmIoU| ≤ {MAX_MIOU_CHANGE:g} "
        "points against the torch fp32 masks.",
        "",
        "| tier | row | mIoU | ΔmIoU vs torch fp32 | within goal | pixel agreement with torch fp32 | images/s | note |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for r in report["rows"]:
        if r.get("skipped"):
            lines.append(f"| {TIER[r['row']]} | {r['row']} | — | — | — | — | — | skipped: {r['skipped']} |")
            continue
        d = r["delta_miou"]
        lines.append(
            f"| {TIER[r['row']]} | {r['row']} | {r['miou']:.2f} | {d:+.2f} | "
            f"{'yes' if abs(d) <= MAX_MIOU_CHANGE else 'NO'} | {100 * r['pixel_agreement']:.3f} % | "
            f"{r['images_per_s']:.1f} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Bar chart: each row's ΔmIoU against torch fp32, the ±goal band shaded."""
    rows = [r for r in report["rows"] if not r.get("skipped")]
    colors = {"fp32": "tab:blue", "bf16": "tab:green", "int8": "tab:orange"}
    ref = next(r["miou"] for r in rows if r["row"] == "torch-fp32")

    def draw(fig: Any, axes: list[Any]) -> None:
        ax = axes[0]
        ax.axhspan(-MAX_MIOU_CHANGE, MAX_MIOU_CHANGE, color="0.9", label=f"goal ±{MAX_MIOU_CHANGE:g}")
        ax.bar([r["row"] for r in rows], [r["delta_miou"] for r in rows], color=[colors[r["tier"]] for r in rows])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("ΔmIoU vs torch fp32 (points)")
        title = f"pseudo masks by tier, demo model ({report['images']} images); torch fp32 mIoU {ref:.2f}"
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.legend(fontsize=8)

    save_plot(path, draw, (7, 3.6), ncols=1)


@cli
def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="weakclip bench tier-masks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="demo_out", help="a finished `weakclip demo` folder (default: demo_out)")
    add_out_argument(ap)
    ap.add_argument("--workdir", help="masks and int8 models (default: <demo>/tier_masks)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list from {','.join(ROWS)}")
    ap.add_argument("--calib", type=int, default=16, help="calibration images for the int8 rows (default 16)")
    ap.add_argument("--limit", type=int, help="first N training images only (default: all)")
    args = ap.parse_args(argv)

    demo = Path(args.demo)
    data = demo / "data"
    files = {"checkpoint": demo / "run" / "final.safetensors", "onnx": demo / "onnx" / "weakclip.onnx"}
    classes = data / "class_names.txt"
    needed = {"trained checkpoint": files["checkpoint"], "ONNX export": files["onnx"], "class list": classes}
    for what, p in needed.items():
        if not p.is_file():
            raise UsageError(f"{p}: {what} not found; run `weakclip demo --out {demo}` first")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = sorted(set(rows) - set(ROWS))
    if bad:
        raise UsageError(f"--rows: unknown row(s) {bad}; choose from {ROWS}")
    if "torch-fp32" not in rows:
        rows.insert(0, "torch-fp32")  # the reference
    work = Path(args.workdir) if args.workdir else demo / "tier_masks"
    out = Path(args.out)
    if out.resolve() == demo.resolve() or data.resolve() in (out.resolve(), *out.resolve().parents):
        raise UsageError(f"--out {out}: must not be the demo folder or inside its data")
    work.mkdir(parents=True, exist_ok=True)
    train_list = data / "ImageSets" / "Segmentation" / "train.txt"
    names = [n.strip() for n in train_list.read_text().splitlines() if n.strip()][: args.limit]
    image_list = write_text_atomic(work / "images.txt", "\n".join(names) + "\n")
    K = len([n for n in classes.read_text().splitlines() if n.strip()])
    feats = cpu_features.detect()
    emulate_bf16 = cpu_features.missing_for("bf16", feats) is not None
    log(f"{feats.summary()}; {len(names)} images; rows {rows}")

    from weakclip.export import quantize

    prep: dict[str, Any] = {}
    if "onnxruntime-int8" in rows:
        from weakclip.engines.base import engine_fields_from_metadata
        from weakclip.engines.ort_engine import read_onnx_metadata

        f = engine_fields_from_metadata(read_onnx_metadata(files["onnx"]))
        calib = quantize.calibration_windows(data / "JPEGImages", f["crop_size"], f["mean"], f["std"], args.calib)
        files["onnx_int8"] = work / "weakclip_int8.onnx"
        prep["onnxruntime_int8"] = quantize.quantize_int8(files["onnx"], files["onnx_int8"], calib)
        log(f"int8 ONNX: {prep['onnxruntime_int8']}")

    from weakclip.engines.generate import RunOptions, generate
    from weakclip.errors import WeakclipError
    from weakclip.masks.evaluate import evaluate_dirs

    results = []
    gt = data / "SegmentationClass"
    for row in rows:
        masks = work / "masks" / row
        spec = engine_spec(row, files, emulate_bf16)
        log(f"{row}: generate with {spec.engine} {spec.model} {dict(spec.options)}")
        t = time.perf_counter()
        run = RunOptions(workers=2, overwrite=True, progress=False)
        try:
            generate(image_list, masks, spec, image_root=data / "JPEGImages", run=run)
        except WeakclipError as e:
            results.append({"row": row, "tier": TIER[row], "skipped": f"generate failed: {e}"})
            continue
        seconds = time.perf_counter() - t
        metrics, n = evaluate_dirs(masks, gt, K, names)
        r: dict[str, Any] = {"row": row, "tier": TIER[row], "miou": 100 * metrics.miou, "images": n}
        r.update(images_per_s=n / seconds, masks=str(masks))
        if row == "torch-bf16" and emulate_bf16:
            r["note"] = "emulated bf16 (this CPU has no avx512_bf16 / amx_bf16): same roundings, not a speed"
        results.append(r)
    ref = next((r for r in results if r["row"] == "torch-fp32" and not r.get("skipped")), None)
    if ref is None:
        log("the torch fp32 reference did not run")
        return 1
    for r in results:
        if not r.get("skipped"):
            r["delta_miou"] = r["miou"] - ref["miou"]
            r["pixel_agreement"] = mask_agreement(Path(r["masks"]), Path(ref["masks"]), names)
    report = {
        "demo": str(demo),
        "checkpoint": str(files["checkpoint"]),
        "images": len(names),
        "max_miou_change": MAX_MIOU_CHANGE,
        "machine": machine_info(),
        "cpu_features": feats.to_dict(),
        "prepare": prep,
        "rows": results,
    }
    md = markdown(report)
    write_results("tier_masks", report, md, out)
    print(md)
    plot(report, out / "tier_masks.png")
    failed = [r["row"] for r in results if not r.get("skipped") and abs(r["delta_miou"]) > MAX_MIOU_CHANGE]
    verdict = (
        f"over the {MAX_MIOU_CHANGE:g}-point goal: {failed}"
        if failed
        else f"every row within {MAX_MIOU_CHANGE:g} points"
    )
    log(f"wrote {out / 'tier_masks'}.{{json,md,png}}; {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
