"""weakclip-export: a WeakCLIP checkpoint → ONNX graphs with the text side precomputed (SPEC §6); exit status 0 ok,
1 a check or the exporter failed, 2 a usage error (before any slow work).  Library API: ``pipeline.export_model``.
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
    """Every option but --checkpoint and --out is an ExportOptions field (``dest``)."""
    ap = ArgumentParser(prog=PROG, description="Export a WeakCLIP checkpoint to ONNX (text embeddings precomputed).")
    ap.add_argument("--checkpoint", required=True, help="WeakCLIP .safetensors checkpoint (weights + config)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--opset", type=int, default=core.OPSET, help=f"ONNX opset (default {core.OPSET}, pinned)")
    ap.add_argument("--exporter", choices=core.EXPORTERS, default=core.DEFAULT_EXPORTER, help="torch ONNX exporter")
    ap.add_argument("--simplify", action="store_true", help="simplify every graph with onnxslim")
    ap.add_argument("--fp16", action="store_true", help="also write fp16 graphs (<graph>_fp16.onnx, fp32 I/O)")
    ap.add_argument("--custom-op", action="store_true", help="also write the TensorRT custom-op variant")
    int8_help = "also write weakclip_int8.onnx (CPU), calibrated on this image folder or list file"
    ap.add_argument("--int8", metavar="IMAGES", dest="int8_calibration", help=int8_help)
    count_help = "calibration windows for --int8 (default 16)"
    ap.add_argument(
        "--int8-count", type=int, default=16, dest="int8_calibration_count", metavar="INT8_COUNT", help=count_help
    )
    ap.add_argument(
        "--skip-check", action="store_false", dest="check", help="skip ONNX Runtime vs PyTorch (checker still runs)"
    )
    graphs = ",".join(core.FILES)
    ap.add_argument(
        "--graphs", default=graphs, type=comma_list, help=f"comma list of graphs to write (default all: {graphs})"
    )
    ap.add_argument("--atol", type=float, default=core.ATOL, help="fp32 check: max |Δ| ≤ atol + rtol·max|ref|")
    ap.add_argument("--rtol", type=float, default=core.RTOL)
    ap.add_argument("--min-agreement", type=float, default=core.MIN_AGREEMENT, help="fp32 check: argmax agreement")
    return ap


def comma_list(s: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in s.split(",") if g.strip())


@cli
def main(argv: Sequence[str] | None = None) -> int:
    fields = vars(build_parser().parse_args(argv))
    t0 = time.perf_counter()
    ckpt, out = Path(fields.pop("checkpoint")), fields.pop("out")
    opts = ExportOptions(**fields)
    # Every input is checked before the checkpoint is loaded and before any graph is traced.
    expect(ckpt, ("weakclip",), "export --checkpoint")
    if Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"{out}: --out is a file; expected an output folder")
    try:
        validate_options(opts)
    except ExportInputError as e:
        raise UsageError(str(e)) from None
    with removed_if_left_empty(out):  # a failed export leaves no empty --out behind
        ensure_writable(out)
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
            export_model(model, out, opts, source=str(ckpt))
        except ExportInputError as e:  # e.g. a calibration image that cannot be decoded (read before the export)
            raise UsageError(str(e)) from None
        except CheckFailed as e:
            raise RuntimeFailure(f"check failed: {e}") from None
        except ExportError as e:
            raise RuntimeFailure(str(e)) from None
    log(f"done in {time.perf_counter() - t0:.1f} s → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
