"""The whole export (``weakclip-export``): the standard graphs, then the --custom-op, --fp16 and --int8 variants,
their self-checks and the report ``export.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakclip.data.io import file_sha256, write_text_atomic
from weakclip.export import core, custom_op, fp16, quantize
from weakclip.export.core import ExportError, ExportInputError, ExportOptions, log
from weakclip.model.model import WeakCLIP


def validate_options(opts: ExportOptions) -> None:
    """Checks that need no model (--int8's images are listed, not decoded); a problem is a one-line ExportInputError."""
    if opts.exporter not in core.EXPORTERS:
        raise ExportInputError(f"unknown exporter {opts.exporter!r}; choose one of {core.EXPORTERS}")
    unknown = sorted(set(opts.graphs) - set(core.FILES))
    if unknown or not opts.graphs:
        raise ExportInputError(f"unknown graph(s) {unknown}; choose from {', '.join(core.FILES)}")
    if opts.int8_calibration is not None:
        if "end_to_end" not in opts.graphs:
            raise ExportInputError(
                "--int8 quantises the end_to_end graph (weakclip.onnx); include end_to_end in --graphs"
            )
        if opts.int8_calibration_count < 1:
            raise ExportInputError(f"--int8-count must be >= 1, got {opts.int8_calibration_count}")
        try:
            quantize.calibration_paths(opts.int8_calibration, opts.int8_calibration_count)
        except ValueError as e:
            raise ExportInputError(str(e)) from None


def export_model(
    model: WeakCLIP, out_dir: str | os.PathLike, opts: ExportOptions | None = None, source: str = ""
) -> dict[str, Any]:
    """Export ``model`` (eval mode is set) to ``out_dir``; returns the report also written to ``export.json``."""
    opts = opts or ExportOptions()
    validate_options(opts)
    model = model.eval().float()
    cfg = model.config
    windows = None
    if opts.int8_calibration is not None:  # decoded up front: a bad image fails before the fp32 export
        try:
            windows = quantize.calibration_windows(
                opts.int8_calibration, cfg.crop_size, cfg.mean, cfg.std, opts.int8_calibration_count
            )
        except ValueError as e:
            raise ExportInputError(str(e)) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    crop, patch = cfg.crop_size, cfg.patch_size
    with core.timed("text embeddings T (K, E) precomputed"), torch.no_grad():
        T = model.text_embeddings().detach().float().clone()  # the prompt learner + text tower, run once
    specs = {s.kind: s for s in core.graph_specs(model, T)}
    example = core.example_images(crop, patch)
    shapes = core.check_shapes(crop, patch)
    provenance = {}
    if source and Path(source).is_file():
        provenance = {
            "source_checkpoint": Path(source).name,
            "source_checkpoint_sha256": file_sha256(source, with_data=False),
        }

    def metadata(kind: str) -> dict[str, str]:
        return {**core.model_metadata(model, kind=kind, opset=opts.opset, exporter=opts.exporter), **provenance}

    report: dict[str, Any] = {
        "source": source,
        **provenance,
        "options": dataclasses.asdict(opts),
        "opset": opts.opset,
        "exporter": opts.exporter,
        "example_shape": list(example.shape),
        "check_shapes": [list(s) for s in shapes],
        "config": cfg.to_dict(),
        "versions": core.versions(),
        "graphs": {},
    }
    protos: dict[str, Any] = {}
    failures: list[str] = []
    parts = ("encoder", "coattention", "decoder")
    for kind in (k for k in core.FILES if k in opts.graphs):  # the parts first: end_to_end is composed from them
        spec = specs[kind]
        path = out / spec.file
        composed = kind == "end_to_end" and all(p in protos for p in parts)
        how = "composing encoder ∘ coattention ∘ decoder" if composed else f"exporting with {opts.exporter}"
        log(f"{kind}: {how} (opset {opts.opset}) → {path}")
        t0 = time.perf_counter()
        if composed:
            proto = core.compose_end_to_end(*(protos[p] for p in parts), name="weakclip", patch=patch)
        else:
            try:
                proto = core.export_graph(spec, spec.make_inputs(example), opts, crop, patch)
            except ExportError:
                raise
            except Exception as e:  # noqa: BLE001 - exporter internals: one line for the CLI, the cause chained
                first = str(e).strip().splitlines()[0]
                raise ExportError(f"{kind}: the {opts.exporter} exporter failed: {first}") from e
        t_export = time.perf_counter() - t0
        if opts.simplify and not composed:  # a composed graph is made of simplified parts
            with core.timed(f"{kind}: onnxslim"):
                proto = core.simplify(proto)
        core.set_metadata(proto, metadata(kind))
        core.save_model(proto, path)
        if kind in parts:  # end_to_end and the custom-op graphs are composed from them
            protos[kind] = proto
        entry: dict[str, Any] = {"file": spec.file, "mb": round(core.file_mb(path), 3), "export_s": round(t_export, 2)}
        if composed:
            entry["composed_from"] = [core.FILES[p] for p in parts]
        done = "composed" if composed else "exported"
        log(f"{kind}: {done} in {t_export:.1f} s, {entry['mb']:.1f} MB, onnx.checker full check ok")
        if opts.check:
            core.check_into(entry, failures, "", path, spec, spec.module, shapes, **opts.tolerance)
        report["graphs"][kind] = entry

    if opts.custom_op:
        report["custom_op"] = custom_op.export_custom_op(
            model, T, out, opts, specs=specs, protos=protos, failures=failures, metadata=metadata
        )
    if opts.fp16:
        report["fp16"] = fp16.export_fp16(out, opts, specs=specs, shapes=shapes, failures=failures)
    if windows is not None:
        report["int8"] = export_int8(out, windows)
    if failures and opts.exporter == "torchscript":
        hint = "the TorchScript exporter bakes the example token count into open_clip's attention reshapes"
        failures.append(f"hint: {hint}, so other H, W fail; use --exporter dynamo")
    report.update(ok=not failures, failures=failures)
    write_text_atomic(out / "export.json", json.dumps(report, indent=1))
    if failures:
        raise core.CheckFailed(" | ".join(failures))
    return report


def export_int8(out: Path, windows: list[np.ndarray]) -> dict[str, Any]:
    """weakclip_int8.onnx from weakclip.onnx; its agreement with fp32 ORT on the windows is reported, not asserted."""
    src, dst = out / core.FILES["end_to_end"], out / "weakclip_int8.onnx"  # end_to_end is in opts.graphs (validated)
    with core.timed(f"int8: static convolutions ({len(windows)} calibration windows) + dynamic ViT linears"):
        info = quantize.quantize_int8(src, dst, windows)
    fp32, int8 = core.ort_session(src), core.ort_session(dst)
    agree, max_abs = [], 0.0
    for x in windows:
        a = fp32.run(["logits"], {"image": x})[0]
        b = int8.run(["logits"], {"image": x})[0]
        agree.append(float((a.argmax(1) == b.argmax(1)).mean()))
        max_abs = max(max_abs, float(np.abs(a - b).max()))
    info.update(argmax_agreement_vs_fp32=float(np.mean(agree)), max_abs_dlogit_vs_fp32=max_abs)
    log(
        f"int8: {dst.name} {info['mb']:.1f} MB; on the calibration windows vs fp32: argmax agreement "
        f"{100 * info['argmax_agreement_vs_fp32']:.3f} %, max |Δlogit| {max_abs:.3g}"
    )
    return info
