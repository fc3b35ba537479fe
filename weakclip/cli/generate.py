"""weakclip generate: pseudo masks for a dataset with any engine (the command; the work is weakclip.engines.generate.generate)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from weakclip.engines.base import EngineError, PrecisionError, available_engines
from weakclip.errors import ArgumentParser, RuntimeFailure, UsageError, cli
from weakclip.masks.batch import arg_type, shard_from
from weakclip.model.config import DEFAULT_SCALES, scales_from


def _engine_opt(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--engine-opt expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="weakclip-generate", description="Generate pseudo masks with multi-scale × flip sliding-window inference."
    )
    io = ap.add_argument_group("inputs and outputs").add_argument
    io("--images", required=True, help="image folder, or a list file (one name or path per line)")
    io("--image-root", help="folder that list-file entries are relative to (default: the list's folder)")
    io("--ext", default=".jpg", help="extension added to list entries that have none (default: %(default)s)")
    io("--out", required=True, help="output folder: <name>.png masks (+ probs/, overlays/)")
    io(
        "--labels",
        help="image-level labels (JSON name->[idx], text 'name idx ...', or cls_labels.npy): "
        "pixels predicted as an absent class become 255",
    )
    io("--save-probs", action="store_true", help="also write probs/<name>.npy (K, H, W)")
    io(
        "--probs-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="dtype of the saved probabilities (default: %(default)s; float32 = the official .npy)",
    )
    io("--no-palette", dest="palette", action="store_false", help="plain L masks, no VOC palette")
    io(
        "--overlays",
        type=int,
        default=0,
        metavar="N",
        help="write colour overlays for N sample images into OUT/overlays/",
    )
    io(
        "--overwrite",
        action="store_true",
        help="recompute images whose outputs already exist, also when they were made with other settings",
    )
    io("--shard", type=arg_type(shard_from), help="i/N: process every N-th image from i (default: RANK/WORLD_SIZE)")

    en = ap.add_argument_group("engine").add_argument
    en(
        "--engine",
        default="auto",
        help="auto (from the model file: .safetensors → torch, .onnx → onnxruntime, TensorRT plan → tensorrt), "
        f"one of {available_engines()}, or module:Factory (default: %(default)s)",
    )
    en("--model", help="checkpoint (torch), .onnx (onnxruntime) or engine/ONNX file (tensorrt)")
    en(
        "--device",
        help="engine device: cpu, cuda, or auto (cuda when torch sees a GPU, else cpu); "
        "cuda → cuda:$LOCAL_RANK under torchrun",
    )
    en(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8"),
        help="precision tier: torch engine fp32 / fp16 (CUDA) / bf16 (CPU with avx512_bf16 or amx_bf16, or a bf16 "
        "GPU); onnxruntime: the tier of the .onnx file (int8: weakclip_int8.onnx from export --int8); a tier the "
        "machine or file lacks is refused in one line",
    )
    en("--channels-last", action="store_true", help="torch engine: NHWC memory format")
    en(
        "--engine-opt",
        type=_engine_opt,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra engine option (value parsed as JSON when possible); repeatable",
    )

    inf = ap.add_argument_group(
        "inference (defaults follow the engine's crop c: stride round(2c/3), base size c)"
    ).add_argument
    inf(
        "--scales",
        type=arg_type(scales_from, "--"),
        default=DEFAULT_SCALES,
        help="comma list of view ratios, or 'official' = 0.5,0.75,1.0,1.25,1.5,1.75 (default: 1.0)",
    )
    inf("--flip", action="store_true", help="add horizontally flipped views (official: on)")
    inf(
        "--crf",
        choices=("none", "voc", "coco"),
        default="none",
        help="dense CRF post-processing (default: %(default)s)",
    )
    inf("--crop", type=int, help="sliding-window size")
    inf("--stride", type=int, help="sliding-window stride")
    inf("--base-size", type=int, help="short side of the ratio-1 view")
    inf("--max-long", type=int, help="long-side limit of the ratio-1 view (default 4 × base size)")
    inf("--batch", type=int, default=16, help="windows per engine call (default: %(default)s)")
    inf("--chunk", type=int, default=4, help="images whose windows are batched together (default: %(default)s)")
    inf(
        "--tta-device",
        default="cpu",
        help="where views are resized and merged; cuda only with engines that take device tensors (torch) "
        "(default: %(default)s)",
    )

    ex = ap.add_argument_group("execution").add_argument
    ex("--workers", type=int, default=4, help="decoding threads and writing threads, 0 = inline (default: %(default)s)")
    ex(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's choice); 1-2 per process when several shards share a CPU",
    )
    ex("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return ap


def engine_options(a: argparse.Namespace) -> dict[str, Any]:
    """The engine keywords of the command line: ``--device auto`` → cuda when torch sees a GPU, ``cuda`` →
    ``cuda:$LOCAL_RANK`` under torchrun."""
    device = a.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    opts = {"device": device, "precision": a.precision, "channels_last": a.channels_last}
    return {k: v for k, v in opts.items() if v} | dict(a.engine_opt)


def _from_args(cls: Any, a: argparse.Namespace) -> Any:
    """A dataclass of options from the same-named command-line arguments."""
    return cls(**{f.name: getattr(a, f.name) for f in dataclasses.fields(cls)})


@cli
def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from weakclip.engines.generate import EngineSpec, MaskOptions, RunOptions, generate  # torch: after parsing

    try:
        engine = EngineSpec(a.model, a.engine, engine_options(a))
        masks, run = _from_args(MaskOptions, a), _from_args(RunOptions, a)
        generate(a.images, a.out, engine, image_root=a.image_root, ext=a.ext, labels=a.labels, masks=masks, run=run)
    except (ValueError, PrecisionError) as e:  # a bad input found by library code (labels, options, precision)
        raise UsageError(str(e)) from None
    except EngineError as e:
        raise RuntimeFailure(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
