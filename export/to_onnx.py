"""weakclip-export: a WeakCLIP checkpoint → ONNX graphs with the text side precomputed (SPEC §6).

Writes encoder.onnx, coattention.onnx, decoder.onnx, weakclip.onnx (graph split: :mod:`weakclip.export.wrappers`),
the --custom-op/--fp16/--int8 variants and export.json (options, sizes, every check's parity numbers).  Every file
gets ``onnx.checker``'s full check, then ONNX Runtime (CPU) against PyTorch at two shapes.  Exit status: 0 ok, 1 a
check or the exporter failed, 2 a usage error (before any slow work).  Library API: ``pipeline.export_model``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import weakclip
from weakclip.data.filekind import expect
from weakclip.data.io import ensure_writable, removed_if_left_empty
from weakclip.errors import ArgumentParser, RuntimeFailure, UsageError, cli
from weakclip.export import core
from weakclip.export.core import CheckFailed, ExportError, ExportInputError, ExportOptions, log
from weakclip.export.pipeline import export_model, validate_options
from weakclip.progress import setup_logging

PROG = "weakclip-export"


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog=PROG, description="Export a WeakCLIP checkpoint to ONNX (text embeddings precomputed).")
    ap.add_argument("--checkpoint", required=True, help="WeakCLIP .safetensors checkpoint (weights + config)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--opset", type=int, default=core.OPSET, help=f"ONNX opset (default {core.OPSET}, pinned)")
    ap.add_argument("--exporter", choices=core.EXPORTERS, default=core.DEFAULT_EXPORTER, help="torch ONNX exporter")
    ap.add_argument("--simplify", action="store_true", help="simplify every graph with onnxslim")
    ap.add_argument("--fp16", action="store_true", help="also write fp16 graphs (<graph>_fp16.onnx, fp32 I/O)")
    ap.add_argument("--custom-op", action="store_true", help="also write the TensorRT custom-op variant")
    ap.add_argument(
        "--int8",
        metavar="IMAGES",
        help="also write weakclip_int8.onnx (CPU), calibrated on this image folder or list file",
    )
    ap.add_argument("--int8-count", type=int, default=16, help="calibration windows for --int8 (default 16)")
    ap.add_argument("--skip-check", action="store_true", help="skip ONNX Runtime vs PyTorch (checker still runs)")
    graphs = ",".join(core.FILES)
    ap.add_argument("--graphs", default=graphs, help=f"comma list of graphs to write (default all: {graphs})")
    ap.add_argument("--atol", type=float, default=core.ATOL, help="fp32 check: max |Δ| ≤ atol + rtol·max|ref|")
    ap.add_argument("--rtol", type=float, default=core.RTOL)
    ap.add_argument("--min-agreement", type=float, default=core.MIN_AGREEMENT, help="fp32 check: argmax agreement")
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    same = ("opset", "exporter", "simplify", "fp16", "custom_op", "atol", "rtol", "min_agreement")
    opts = ExportOptions(
        **{k: getattr(args, k) for k in same},
        int8_calibration=args.int8,
        int8_calibration_count=args.int8_count,
        check=not args.skip_check,
        graphs=tuple(g.strip() for g in args.graphs.split(",") if g.strip()),
    )
    # Every input is checked before the checkpoint is loaded and before any graph is traced.
    ckpt = Path(args.checkpoint)
    expect(ckpt, ("weakclip",), "export --checkpoint")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"{args.out}: --out is a file; expected an output folder")
    try:
        validate_options(opts)
    except ExportInputError as e:
        raise UsageError(str(e)) from None
    with removed_if_left_empty(args.out):  # a failed export leaves no empty --out behind
        ensure_writable(args.out)
        try:
            model = weakclip.load_checkpoint(ckpt)
        except Exception as e:  # noqa: BLE001 - a WeakCLIP file that does not load is one clear line, not a traceback
            msg = " ".join(str(e).split()) or type(e).__name__
            raise UsageError(msg if str(ckpt) in msg else f"{ckpt}: cannot load checkpoint: {msg}") from None
        setup_logging(logger="weakclip.export")  # the progress lines on stdout
        cfg = model.config
        log(
            f"checkpoint {ckpt} (K = {cfg.num_classes}, crop {cfg.crop_size}, ViT width {cfg.vision_width} × "
            f"{cfg.vision_layers}); torch {torch.__version__}"
        )
        try:
            export_model(model, args.out, opts, source=str(ckpt))
        except ExportInputError as e:  # e.g. a calibration image that cannot be decoded (read before the export)
            raise UsageError(str(e)) from None
        except CheckFailed as e:
            raise RuntimeFailure(f"check failed: {e}") from None
        except ExportError as e:
            raise RuntimeFailure(str(e)) from None
    log(f"done in {time.perf_counter() - t0:.1f} s → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
