"""End-to-end demo on the embedded default: synthetic data → tiny WeakCLIP training → ONNX export →
ONNX Runtime pseudo masks (CPU) → mIoU against GT and the seeds, images/s, and overlay pictures.

A rerun in the same ``--out`` with the same settings reuses the finished steps, except the pseudo masks (images/s is
measured each time); one with other settings is refused unless ``--overwrite``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from weakclip.data.io import removed_if_left_empty, write_text_atomic
from weakclip.errors import ArgumentParser, RuntimeFailure, UsageError, cli
from weakclip.progress import setup_logging

SETTINGS_FILE = "demo_settings.json"
# What the demo writes under --out (--overwrite deletes these, nothing else).
DEMO_OUTPUTS: tuple[str, ...] = ("data", "run", "run_clip_seeds", "onnx", "masks", "report", "result.json")
DEMO_OUTPUTS += ("result_labels_only.json", SETTINGS_FILE)


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _train(data: Path, run: Path, iters: int, *extra: str) -> None:
    from weakclip.training.config import read_config
    from weakclip.training.train import run_training

    every = [f"schedule.val_interval={max(iters // 3, 1)}", f"schedule.checkpoint_interval={max(iters // 6, 1)}"]
    run_training(
        read_config(None, [f"data.root={data}", *extra, f"work_dir={run}", f"train.iters={iters}", *every]), resume=True
    )


def prepare_out(out: Path, settings: dict[str, int], overwrite: bool) -> None:
    """Check ``out`` against the recorded settings (or delete the demo's outputs on ``overwrite``), then record them."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; expected a folder")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    ours = [name for name in present if name in DEMO_OUTPUTS]
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    redo = "pass --overwrite to run the demo again there (deletes only the demo's outputs) or choose another --out"
    if overwrite:
        for p in (out / name for name in ours):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if ours:
            print(f"--overwrite: deleted {', '.join(ours)} from {out}")
    elif ours:
        try:
            recorded = json.loads((out / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict):
            why = f"holds demo outputs ({shown}) but no readable {SETTINGS_FILE} to compare the settings with"
            raise UsageError(f"--out {out} {why}; {redo}")
        if diff := [f"--{k} {recorded.get(k)} → {v}" for k, v in settings.items() if recorded.get(k) != v]:
            raise UsageError(f"--out {out} holds a demo run with other settings ({', '.join(diff)}); {redo}")
        same = ", ".join(f"--{k} {v}" for k, v in settings.items())
        print(f"{out}: same settings as recorded ({same}): reusing the finished steps")
    elif present:
        raise UsageError(f"--out {out} is not empty ({shown}) and holds no demo run; choose a new or empty folder")
    _write_json(out / SETTINGS_FILE, settings)


@cli
def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model needs no download; never try one
    ap = ArgumentParser(prog="weakclip demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_out", help="working folder (default: demo_out)")
    ap.add_argument("--images", type=int, default=200, help="synthetic training images")
    ap.add_argument("--iters", type=int, default=600, help="training iterations (tiny model, batch 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run (24 images, 6 iterations)")
    again = "run every step again in an --out that holds a demo run (deletes the demo's outputs there)"
    ap.add_argument("--overwrite", action="store_true", help=again)
    routes = (
        "seeds: the given CAM-like seeds → training → ONNX Runtime masks (default); labels-only: image labels only "
        "→ CLIP-ES seeds (weakclip.masks.seeds) → training → masks; both"
    )
    ap.add_argument("--route", choices=("seeds", "labels-only", "both"), default="seeds", help=routes)
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.iters = 24, 6
    if args.images < 1 or args.iters < 1:
        raise UsageError(f"--images and --iters must be >= 1, got --images {args.images} --iters {args.iters}")
    out = Path(args.out)
    with removed_if_left_empty(out):  # a refused run leaves no empty --out behind
        prepare_out(out, {"images": args.images, "iters": args.iters, "seed": args.seed}, args.overwrite)
    data, run, onnx_dir, masks = out / "data", out / "run", out / "onnx", out / "masks"
    t_start = time.perf_counter()

    from weakclip.data.synthetic import make_synthetic_dataset

    step("1/5 synthetic VOC-layout dataset")
    if not (data / "class_names.txt").is_file():
        val = max(4, args.images // 5)
        summary = make_synthetic_dataset(data, images=args.images, seed=args.seed, val_images=val, show_progress=True)
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
        _train(data, run, args.iters)
    else:
        print(f"reusing {final}")

    step("3/5 ONNX export (text embeddings precomputed)")
    model_onnx = onnx_dir / "weakclip.onnx"
    if not model_onnx.is_file():
        import weakclip
        from weakclip.export.core import CheckFailed, ExportError, ExportOptions
        from weakclip.export.pipeline import export_model

        setup_logging(logger="weakclip.export")  # the export's progress lines
        try:  # only the graph the masks need (the other three are for TensorRT builds and the parts' checks)
            export_model(weakclip.load_checkpoint(final), onnx_dir, ExportOptions(graphs=("end_to_end",)), str(final))
        except (CheckFailed, ExportError) as e:
            raise RuntimeFailure(f"the export of {final} failed: {e}") from None
    else:
        print(f"reusing {model_onnx}")

    step("4/5 pseudo masks for the training set with ONNX Runtime (CPU)")
    from weakclip.engines.generate import EngineSpec, RunOptions, generate
    from weakclip.masks.evaluate import evaluate_dirs, read_names

    train_list = data / "ImageSets" / "Segmentation" / "train.txt"
    names = read_names(train_list)
    ort, images = EngineSpec(str(model_onnx), "onnxruntime"), data / "JPEGImages"
    with_overlays, plain_run = RunOptions(workers=2, overwrite=True, overlays=8), RunOptions(workers=2, overwrite=True)
    t0 = time.perf_counter()
    generate(train_list, masks / "unmasked", ort, image_root=images, run=with_overlays)
    fps = len(names) / (time.perf_counter() - t0)
    generate(train_list, masks / "labels", ort, image_root=images, labels=data / "cls_labels.json", run=plain_run)

    step("5/5 evaluation against the synthetic ground truth")
    K, gt = len(read_names(data / "class_names.txt")), data / "SegmentationClass"
    runs = (data / "SeedMasks", masks / "unmasked", masks / "labels")
    seeds, plain, masked = (evaluate_dirs(d, gt, K, names)[0] for d in runs)
    result = dict(images=len(names), seeds_miou=100 * seeds.miou, pseudo_mask_miou=100 * plain.miou)
    result |= dict(pseudo_mask_miou_with_labels=100 * masked.miou, onnxruntime_cpu_images_per_s=fps)
    _write_json(out / "result.json", result | {"total_s": time.perf_counter() - t_start})
    print(f"\nseeds mIoU                          {100 * seeds.miou:6.2f}")
    print(f"pseudo masks mIoU (single scale)    {100 * plain.miou:6.2f}")
    print(f"pseudo masks mIoU + label masking   {100 * masked.miou:6.2f}")
    print(f"ONNX Runtime CPU throughput         {fps:6.2f} images/s  ({len(names)} images)")
    print(f"overlays: {masks / 'unmasked' / 'overlays'}   result: {out / 'result.json'}")
    print(f"report: {_write_report(out, data, masks, names)}")
    return 0


def _write_report(out: Path, data: Path, masks: Path, names: list[str]) -> str:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return "not written (it needs matplotlib: pip install 'weakclip[viz]')"
    from weakclip.masks.report import make_report

    runs = [data / "SeedMasks", masks / "unmasked", masks / "labels"]
    run_names = ["seeds", "pseudo masks", "pseudo masks + label masking"]
    gt, images = data / "SegmentationClass", data / "JPEGImages"
    return str(make_report(gt, runs, out / "report", images=names, run_names=run_names, image_root=images).index)


def _labels_only_route(args: argparse.Namespace, out: Path, data: Path) -> None:
    """Image-level labels → CLIP-ES seeds (tiny random CLIP: mechanics, not quality) → training → masks."""
    from weakclip.data.datasets import read_class_names
    from weakclip.engines.generate import EngineSpec, RunOptions, generate
    from weakclip.masks.evaluate import evaluate_dirs, read_names
    from weakclip.masks.seeds import make_seeds

    train_list, images = data / "ImageSets" / "Segmentation" / "train.txt", data / "JPEGImages"
    labels = data / "cls_labels.json"
    clip_seeds, run, masks = data / "ClipSeeds", out / "run_clip_seeds", out / "masks" / "clip_seeds"
    step("labels only 1/3: CLIP-ES seeds from the image-level labels (tiny random CLIP: mechanics only)")
    classes = read_class_names(data / "class_names.txt")
    make_seeds(train_list, labels, clip_seeds, image_root=images, class_names=classes, preset="tiny", clip_weights=None)
    step("labels only 2/3: training the tiny model on the CLIP seeds")
    if not (run / "final.safetensors").is_file():
        _train(data, run, args.iters, "data.seed_dir=ClipSeeds")
    step("labels only 3/3: pseudo masks (torch engine) and evaluation")
    spec = EngineSpec(str(run / "final.safetensors"))
    generate(train_list, masks, spec, image_root=images, labels=labels, run=RunOptions(workers=2, overwrite=True))
    names, K, gt = read_names(train_list), len(classes), data / "SegmentationClass"
    seeds_m, masks_m = (evaluate_dirs(d, gt, K, names)[0] for d in (clip_seeds, masks))
    result = {"clip_seeds_miou": 100 * seeds_m.miou, "masks_from_clip_seeds_miou": 100 * masks_m.miou}
    _write_json(out / "result_labels_only.json", result)
    print(f"\nCLIP seeds mIoU (random tiny CLIP)   {result['clip_seeds_miou']:6.2f}")
    print(f"masks trained on CLIP seeds mIoU     {result['masks_from_clip_seeds_miou']:6.2f}")
    print("(random CLIP weights: these numbers show the route runs, not what pretrained CLIP gives)")


if __name__ == "__main__":
    sys.exit(main())
