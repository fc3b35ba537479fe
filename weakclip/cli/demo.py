"""End-to-end demo on the embedded default: synthetic data → tiny WeakCLIP training → ONNX export →
ONNX Runtime pseudo masks (CPU) → mIoU against GT and the seeds, images/s, and overlay pictures.

    weakclip demo [--out demo_out] [--images 200] [--iters 600] [--quick]      (or: python demo.py ...)

Everything is written under ``--out`` (default ``./demo_out``).  The settings that change the results (``--images``,
``--iters``, ``--seed``; ``--quick`` sets the first two) are recorded in ``<out>/demo_settings.json``.  A rerun with
the same settings reuses the finished steps (the dataset, a finished training run, a finished export; pseudo masks
are always regenerated so the images/s figure is measured).  A rerun with other settings is refused with one line
naming the differences unless ``--overwrite``, which deletes the demo's outputs (``DEMO_OUTPUTS``; other files are
left alone) and runs every step again.  ``--quick`` is a seconds-long smoke version.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from weakclip.data.io import atomic_path, removed_if_left_empty
from weakclip.errors import ArgumentParser, RuntimeFailure, UsageError, cli

SETTINGS_FILE = "demo_settings.json"
# What the demo writes under --out (--overwrite deletes these, nothing else).
DEMO_OUTPUTS = ("data", "run", "run_clip_seeds", "onnx", "masks", "report", "result.json", "result_labels_only.json",
                SETTINGS_FILE)  # fmt: skip


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def demo_settings(args: argparse.Namespace) -> dict[str, int]:
    """The options that change the demo's results, as recorded in ``SETTINGS_FILE`` (``--quick`` resolved)."""
    return {"images": int(args.images), "iters": int(args.iters), "seed": int(args.seed)}


def prepare_out(out: Path, settings: dict[str, int], overwrite: bool) -> None:
    """Check ``out`` against the recorded settings (UsageError naming ``--out`` and the differences), delete the
    demo's outputs on ``overwrite``, then record ``settings``.  Nothing is written before the checks pass."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; expected a folder")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    ours = [name for name in present if name in DEMO_OUTPUTS]
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    redo = "pass --overwrite to run the demo again there (deletes only the demo's outputs) or choose another --out"
    if overwrite:
        for name in ours:
            p = out / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if ours:
            print(f"--overwrite: deleted {', '.join(ours)} from {out}")
    elif ours:
        try:
            recorded = json.loads((out / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict):
            raise UsageError(f"--out {out} holds demo outputs ({shown}) but no readable {SETTINGS_FILE} to compare the "
                             f"settings with; {redo}")  # fmt: skip
        diff = [f"--{k} {recorded.get(k)} → {v}" for k, v in settings.items() if recorded.get(k) != v]
        if diff:
            raise UsageError(f"--out {out} holds a demo run with other settings ({', '.join(diff)}); {redo}")
        print(f"{out}: same settings as recorded ({', '.join(f'--{k} {v}' for k, v in settings.items())}): "
              "reusing the finished steps")  # fmt: skip
    elif present:
        raise UsageError(f"--out {out} is not empty ({shown}) and holds no demo run; choose a new or empty folder")
    with atomic_path(out / SETTINGS_FILE) as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


@cli
def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model needs no download; never try one
    ap = ArgumentParser(prog="weakclip demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_out", help="working folder (default: demo_out)")
    ap.add_argument("--images", type=int, default=200, help="synthetic training images")
    ap.add_argument("--iters", type=int, default=600, help="training iterations (tiny model, batch 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run (24 images, 6 iterations)")
    ap.add_argument("--overwrite", action="store_true",
                    help="run every step again in an --out that holds a demo run (deletes the demo's outputs there)")  # fmt: skip
    ap.add_argument("--route", choices=("seeds", "labels-only", "both"), default="seeds",
                    help="seeds: the given CAM-like seeds → training → ONNX Runtime masks (default); labels-only: "
                    "image labels only → CLIP-ES seeds (weakclip.masks.seeds) → training → masks; both")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.iters = 24, 6
    if args.images < 1 or args.iters < 1:
        raise UsageError(f"--images and --iters must be >= 1, got --images {args.images} --iters {args.iters}")
    out = Path(args.out)
    with removed_if_left_empty(out):  # a refused run leaves no empty --out behind
        prepare_out(out, demo_settings(args), args.overwrite)
    data, run, onnx_dir, masks = out / "data", out / "run", out / "onnx", out / "masks"
    t_start = time.perf_counter()

    from weakclip.data.synthetic import make_synthetic_dataset

    step("1/5 synthetic VOC-layout dataset")
    if not (data / "class_names.txt").is_file():
        summary = make_synthetic_dataset(data, images=args.images, seed=args.seed, val_images=max(4, args.images // 5),
                                         show_progress=True)  # fmt: skip
        print(json.dumps({k: v for k, v in summary.items() if k in ("train_images", "val_images", "seed_miou")}))
    else:
        print(f"reusing {data}")

    if args.route in ("labels-only", "both"):
        _labels_only_route(args, out, data)
        if args.route == "labels-only":
            return 0

    step("2/5 training the tiny model on the seeds (CPU)")
    final = run / "final.safetensors"
    if not final.is_file():
        from weakclip.training.train import main as train_main

        rc = train_main([f"data.root={data}", f"work_dir={run}", f"train.iters={args.iters}", "--resume",
                         f"schedule.val_interval={max(args.iters // 3, 1)}",
                         f"schedule.checkpoint_interval={max(args.iters // 6, 1)}"])  # fmt: skip
        if rc != 0:
            raise RuntimeFailure(f"training into {run} failed (see the lines above)")
    else:
        print(f"reusing {final}")

    step("3/5 ONNX export (text embeddings precomputed)")
    model_onnx = onnx_dir / "weakclip.onnx"
    if not model_onnx.is_file():
        from weakclip.export.to_onnx import main as export_main

        if export_main(["--checkpoint", str(final), "--out", str(onnx_dir)]) != 0:
            raise RuntimeFailure(f"the export of {final} failed (see the lines above)")
    else:
        print(f"reusing {model_onnx}")

    step("4/5 pseudo masks for the training set with ONNX Runtime (CPU)")
    from weakclip.engines.generate import EngineSpec, RunOptions, generate

    train_list = data / "ImageSets" / "Segmentation" / "train.txt"
    names = [n.strip() for n in train_list.read_text().splitlines() if n.strip()]
    ort = EngineSpec(str(model_onnx), "onnxruntime")
    t0 = time.perf_counter()
    generate(train_list, masks / "unmasked", ort, image_root=data / "JPEGImages",
             run=RunOptions(workers=2, overwrite=True, overlays=8))  # fmt: skip
    fps = len(names) / (time.perf_counter() - t0)
    generate(train_list, masks / "labels", ort, image_root=data / "JPEGImages", labels=data / "cls_labels.json",
             run=RunOptions(workers=2, overwrite=True))  # fmt: skip

    step("5/5 evaluation against the synthetic ground truth")
    from weakclip.masks.evaluate import evaluate_dirs

    K = len([n for n in (data / "class_names.txt").read_text().splitlines() if n.strip()])
    gt = data / "SegmentationClass"
    seeds, _ = evaluate_dirs(data / "SeedMasks", gt, K, names)
    plain, _ = evaluate_dirs(masks / "unmasked", gt, K, names)
    masked, _ = evaluate_dirs(masks / "labels", gt, K, names)
    result = {
        "images": len(names),
        "seeds_miou": 100 * seeds.miou,
        "pseudo_mask_miou": 100 * plain.miou,
        "pseudo_mask_miou_with_labels": 100 * masked.miou,
        "onnxruntime_cpu_images_per_s": fps,
        "total_s": time.perf_counter() - t_start,
    }
    with atomic_path(out / "result.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nseeds mIoU                          {result['seeds_miou']:6.2f}")
    print(f"pseudo masks mIoU (single scale)    {result['pseudo_mask_miou']:6.2f}")
    print(f"pseudo masks mIoU + label masking   {result['pseudo_mask_miou_with_labels']:6.2f}")
    print(f"ONNX Runtime CPU throughput         {fps:6.2f} images/s  ({len(names)} images)")
    print(f"overlays: {masks / 'unmasked' / 'overlays'}   result: {out / 'result.json'}")
    print(f"report: {_write_report(out, data, masks, names)}")
    return 0


def _write_report(out: Path, data: Path, masks: Path, names: list[str]) -> str:
    """The HTML report of seeds → pseudo masks → masks with label masking (``<out>/report/index.html``; weakclip
    report); its path, or why it was not written."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return "not written (it needs matplotlib: pip install 'weakclip[viz]')"
    from weakclip.masks.report import make_report

    runs = [data / "SeedMasks", masks / "unmasked", masks / "labels"]
    report = make_report(data / "SegmentationClass", runs, out / "report", images=names,
                         run_names=["seeds", "pseudo masks", "pseudo masks + label masking"],
                         image_root=data / "JPEGImages")  # fmt: skip
    return str(report.index)


def _labels_only_route(args: argparse.Namespace, out: Path, data: Path) -> dict[str, float]:
    """Image-level labels only → CLIP-ES seeds → WeakCLIP training → masks.  With the tiny random-init CLIP of the
    demo the seeds carry no knowledge: this shows the mechanics, not the quality (use --clip-weights openai on real
    data, see the README)."""
    from weakclip.engines.generate import EngineSpec, RunOptions, generate
    from weakclip.masks.evaluate import evaluate_dirs
    from weakclip.masks.seeds import SeedOptions, make_seeds
    from weakclip.training.train import main as train_main

    train_list = data / "ImageSets" / "Segmentation" / "train.txt"
    names = [n.strip() for n in train_list.read_text().splitlines() if n.strip()]
    clip_seeds, run, masks = data / "ClipSeeds", out / "run_clip_seeds", out / "masks" / "clip_seeds"
    step("labels only 1/3: CLIP-ES seeds from the image-level labels (tiny random CLIP: mechanics only)")
    from weakclip.data.datasets import read_class_names

    make_seeds(train_list, data / "cls_labels.json", clip_seeds, image_root=data / "JPEGImages",
               class_names=read_class_names(data / "class_names.txt"), preset="tiny", clip_weights=None,
               options=SeedOptions(), workers=2)  # fmt: skip
    step("labels only 2/3: training the tiny model on the CLIP seeds")
    final = run / "final.safetensors"
    if not final.is_file():
        if train_main([f"data.root={data}", "data.seed_dir=ClipSeeds", f"work_dir={run}", f"train.iters={args.iters}",
                       "--resume", f"schedule.val_interval={max(args.iters // 3, 1)}",
                       f"schedule.checkpoint_interval={max(args.iters // 6, 1)}"]) != 0:  # fmt: skip
            raise RuntimeFailure(f"training into {run} failed (see the lines above)")
    step("labels only 3/3: pseudo masks (torch engine) and evaluation")
    generate(train_list, masks, EngineSpec(str(final)), image_root=data / "JPEGImages",
             labels=data / "cls_labels.json", run=RunOptions(workers=2, overwrite=True))  # fmt: skip
    K = len([n for n in (data / "class_names.txt").read_text().splitlines() if n.strip()])
    gt = data / "SegmentationClass"
    seeds_m, _ = evaluate_dirs(clip_seeds, gt, K, names)
    masks_m, _ = evaluate_dirs(masks, gt, K, names)
    result = {"clip_seeds_miou": 100 * seeds_m.miou, "masks_from_clip_seeds_miou": 100 * masks_m.miou}
    with atomic_path(out / "result_labels_only.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nCLIP seeds mIoU (random tiny CLIP)   {result['clip_seeds_miou']:6.2f}")
    print(f"masks trained on CLIP seeds mIoU     {result['masks_from_clip_seeds_miou']:6.2f}")
    print("(random CLIP weights: these numbers show the route runs, not what pretrained CLIP gives)")
    return result


if __name__ == "__main__":
    sys.exit(main())
