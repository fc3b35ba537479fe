"""Loss ablation on the synthetic set: seed only / seed + boundary / all three, tiny preset, CPU.

For each setting: train, then single-scale pseudo masks of the training images scored against GT next to the seeds'
own mIoU.  Writes ``<out>/loss_ablation.{json,md}``; the dataset and training runs go to ``--workdir``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from weakclip.benchmarks.common import add_out_argument, machine_info, write_results

SETTINGS = {
    "seed only": ["loss.seed=1", "loss.boundary=0", "loss.aux=0"],
    "seed + boundary": ["loss.seed=1", "loss.boundary=1", "loss.aux=0"],
    "seed + boundary + aux": ["loss.seed=1", "loss.boundary=1", "loss.aux=0.4"],
}


def pseudo_mask_miou(checkpoint: Path, data: Path, names: list[str]) -> float:
    import weakclip
    from weakclip.data.io import read_image, read_mask
    from weakclip.data.metrics import ConfusionMatrix
    from weakclip.masks.inference import InferenceOptions, predict

    model = weakclip.load_checkpoint(checkpoint).eval()
    T = model.text_embeddings().detach()
    opts = InferenceOptions.for_engine(model.config, scales=(1.0,), flip=False)
    conf = ConfusionMatrix(model.config.num_classes)
    with torch.no_grad():
        for name in names:
            image = read_image(data / "JPEGImages" / f"{name}.jpg")
            pred = predict(lambda w: model(w, text_embeddings=T).logits, [image], opts)[0]
            conf.update(pred.mask, read_mask(data / "SegmentationClass" / f"{name}.png"))
    return 100 * conf.compute().miou


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default in (("--images", 200), ("--iters", 600), ("--seed", 0)):
        ap.add_argument(flag, type=int, default=default)
    add_out_argument(ap)
    ap.add_argument("--workdir", default=None, help="dataset and training runs (default <out>/loss_ablation_work)")
    args = ap.parse_args(argv)
    from weakclip.data.synthetic import make_synthetic_dataset
    from weakclip.masks.evaluate import evaluate_dirs
    from weakclip.training.config import read_config
    from weakclip.training.train import run_training

    out = Path(args.workdir) if args.workdir else Path(args.out) / "loss_ablation_work"
    data = out / "data"
    if not (data / "class_names.txt").is_file():
        make_synthetic_dataset(data, images=args.images, seed=args.seed, val_images=max(4, args.images // 5))
    names = [n for n in (data / "ImageSets/Segmentation/train.txt").read_text().split() if n]
    K = len((data / "class_names.txt").read_text().split("\n")) - 1
    seeds = 100 * evaluate_dirs(data / "SeedMasks", data / "SegmentationClass", K, names)[0].miou
    rows = []
    base = [f"train.iters={args.iters}", f"schedule.val_interval={args.iters}", "schedule.log_interval=100"]
    for label, overrides in SETTINGS.items():
        work = out / label.replace(" + ", "_").replace(" ", "_")
        t0 = time.perf_counter()
        cfg = read_config(None, [f"data.root={data}", f"work_dir={work}", *base, *overrides])
        run_training(cfg, resume=True, progress=False)
        miou = pseudo_mask_miou(work / "final.safetensors", data, names)
        row = {"losses": label, "pseudo_mask_miou": miou, "seeds_miou": seeds, "gain": miou - seeds}
        rows.append(row | {"train_s": time.perf_counter() - t0})
        print(f"{label:24s} pseudo masks {miou:.2f}  seeds {seeds:.2f}  gain {miou - seeds:+.2f}", flush=True)
    info = machine_info()
    cmd = f"weakclip bench loss-ablation --images {args.images} --iters {args.iters} --seed {args.seed}"
    md = "| losses | pseudo-mask mIoU | seeds mIoU | gain | train+eval time (s) |\n|---|---|---|---|---|\n" + "".join(
        f"| {r['losses']} | {r['pseudo_mask_miou']:.2f} | {r['seeds_miou']:.2f} | {r['gain']:+.2f} | {r['train_s']:.0f} |\n"
        for r in rows
    )
    md += (
        f"\n{args.images} synthetic training images (seed {args.seed}), tiny preset, batch 8, {args.iters} iterations, "
        f"single-scale masks on the training images.  Command: `{cmd}`.  Machine: {info['cpu']}, "
        f"{info['usable_cores']} cores.\n"
    )
    print(md)
    j, _ = write_results("loss_ablation", {"machine": info, "command": cmd, "rows": rows}, md, args.out)
    print(f"wrote {j.with_suffix('')}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
