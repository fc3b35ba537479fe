"""weakclip seeds: CLIP-ES seeds from image-level labels (the command; the work is weakclip.masks.seeds.make_seeds)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from weakclip.errors import ArgumentParser, UsageError, cli
from weakclip.masks.batch import arg_type, shard_from
from weakclip.model.config import DEFAULT_SCALES, get_config, scales_from
from weakclip.model.crf import CLIP_ES_CRF

# SeedOptions and make_seeds keywords given by the command-line arguments of the same name
_ALGORITHM_ARGS = ("scales", "flip", "attn_layers", "box_threshold", "bg_power", "crf_image")
_IO_ARGS = ("image_root", "ext", "save_scores", "palette", "overlays", "overwrite", "shard", "workers", "progress")
_CLIP_ARGS = ("preset", "prompts", "device")


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="weakclip seeds",
        description="CLIP-ES seeds from image-level labels (no CAM network): Softmax-GradCAM + class-aware "
        "attention affinity + CRF with an ignore threshold.",
    )
    io = ap.add_argument_group("inputs and outputs").add_argument
    io("--images", required=True, help="image folder, or a list file (one name or path per line)")
    io("--image-root", help="folder that list-file entries are relative to (default: the list's folder)")
    io("--ext", default=".jpg", help="extension added to list entries without one (default: %(default)s)")
    io(
        "--labels",
        required=True,
        help="image-level labels: cls_labels.npy, JSON name→[idx] or text 'name idx ...' (1-based foreground indices)",
    )
    io(
        "--class-names",
        help="one class per line, 'background' first (default: class_names.txt beside "
        "--labels if present, else the preset's classes)",
    )
    io("--out", required=True, help="output folder of <name>.png seeds (the training seed_dir)")
    io(
        "--save-scores",
        action="store_true",
        help="also write probs/<name>.npy float16 (K, H, W): row 0 background score, rows of the labelled "
        "classes their refined CAMs, other rows 0",
    )
    io("--no-palette", dest="palette", action="store_false", help="plain L PNGs, no VOC palette")
    io("--overlays", type=int, default=0, metavar="N", help="image | seed | blend panels for N images")
    io("--overwrite", action="store_true", help="recompute finished seeds (also under other settings)")
    io("--shard", type=arg_type(shard_from), help="i/N: every N-th image from i (default: RANK/WORLD_SIZE)")

    m = ap.add_argument_group("CLIP").add_argument
    m("--preset", default="vit_b16_voc", help="tower architecture preset (default: %(default)s)")
    m(
        "--clip-weights",
        default="openai",
        help="'openai' (open_clip download cache), a local ViT-B-16.pt (OpenAI's TorchScript file, read "
        "as data: no code from it runs) / .safetensors, or 'none' = random towers (tests only: meaningless "
        "seeds) (default: %(default)s)",
    )
    m("--prompts", default="auto", help="auto | voc | coco | generic | a JSON prompt set (default: auto)")
    m("--device", default="cpu", help="torch device (default: %(default)s)")

    a = ap.add_argument_group("algorithm (defaults = the released CLIP-ES code)").add_argument
    a(
        "--scales",
        type=arg_type(scales_from),
        default=DEFAULT_SCALES,
        help="view scales, or 'official' (default: 1.0, as CLIP-ES)",
    )
    a("--flip", action="store_true", help="add flipped views (CLIP-ES: off)")
    a("--box-threshold", type=float, help="CAA box threshold (default: the prompt set's; VOC 0.4, COCO 0.7)")
    a("--attn-layers", type=int, default=8, help="last blocks averaged into the affinity (default: 8)")
    a("--bg-power", type=float, default=1.0, help="background score (1 − max CAM)^α (default: 1)")
    a(
        "--crf",
        choices=("clip_es", "none"),
        default="clip_es",
        help="dense CRF with CLIP-ES's parameters, or none = argmax (default: %(default)s)",
    )
    a(
        "--ignore-threshold",
        type=float,
        help="CRF confidence below which a pixel becomes 255 (default: 0.95; needs the CRF)",
    )
    a(
        "--crf-image",
        choices=("clip_es", "rgb"),
        default="clip_es",
        help="clip_es: CLIP-ES's mean-subtracted, uint8-wrapped BGR image; rgb: the plain image",
    )

    ex = ap.add_argument_group("execution").add_argument
    ex("--workers", type=int, default=2, help="decoding and writing (CRF) threads, 0 = inline")
    ex("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ex("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ignore_threshold is not None and args.crf == "none":
        raise UsageError(
            "--ignore-threshold is a threshold on the CRF's confidence (CLIP-ES eval_cam_with_crf.py); it needs --crf "
            "clip_es"
        )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from weakclip.masks.seeds import SeedOptions, make_seeds  # torch, cv2, open_clip: after parsing

    weights = None if str(args.clip_weights).lower() == "none" else args.clip_weights
    crf = None if args.crf == "none" else CLIP_ES_CRF
    ignore = 0.95 if args.ignore_threshold is None else args.ignore_threshold
    try:
        names = _class_names(args.class_names, args.labels, args.preset)
        options = SeedOptions(crf=crf, ignore_threshold=ignore, **{k: getattr(args, k) for k in _ALGORITHM_ARGS})
        run = {k: getattr(args, k) for k in _IO_ARGS + _CLIP_ARGS}
        make_seeds(args.images, args.labels, args.out, class_names=names, clip_weights=weights, options=options, **run)
    except (FileNotFoundError, ValueError) as e:  # bad inputs found while starting
        raise UsageError(str(e)) from None
    return 0


def _class_names(class_names: str | None, labels: str, preset: str) -> tuple[str, ...]:
    """``--class-names``, else class_names.txt beside the labels, else the preset's classes."""
    from weakclip.data.datasets import read_class_names

    path = Path(class_names) if class_names else Path(labels).parent / "class_names.txt"
    if class_names or path.is_file():
        return read_class_names(path)
    return tuple(get_config(preset).class_names)


if __name__ == "__main__":
    sys.exit(main())
