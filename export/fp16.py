"""FP16 variants of the exported graphs (TensorRT 11 takes each layer's precision from the ONNX tensor types); I/O,
the sensitive ops and their constants stay fp32.  The check asks a logits argmax agreement ≥ 99 %, not 99.9 %: fp16
rounding gives |Δlogit| of 1e-3…1e-2, and random-weight test models have many pixels with a smaller top-2 margin."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from weakclip.export import core, custom_op
from weakclip.export.core import ExportOptions, GraphSpec

# ONNX Runtime 1.32's CPU NCHWc layout pass segfaults on the fp16 encoder graph; CPU sessions of fp16 graphs skip it.
ORT_CPU_FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)

FP16_EXTRA_BLOCK = (  # on top of the converter's default block list (Resize, Range, Min/Max, TopK, ...)
    *("LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "LogSoftmax"),
    *("ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare", "Pow", "Sqrt"),  # the normalisations' reductions
    *("Div", "Clip", "Erf"),  # the score map's x / max(|x|, eps) (eps = 1e-12 is 0 in fp16) and GELU's erf
)


def op_block_list() -> list[str]:
    from onnxconverter_common import float16

    return sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_EXTRA_BLOCK))


def convert_to_fp16(model: Any) -> Any:
    """fp32 → fp16 ModelProto, fp32 I/O and the :func:`op_block_list` ops kept in fp32.  Plugin nodes are not blocked:
    all their inputs, weights included, become fp16, as the plugin's fp16 kernels expect."""
    import warnings

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise RuntimeError("--fp16 needs onnxconverter-common: pip install onnxconverter-common") from None
    meta, blocked = core.props(model), op_block_list()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "number … will be truncated": undone just below
        m16 = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=blocked, disable_shape_infer=False
        )
    _restore_fp32_constants(model, m16)
    core.set_metadata(m16, {**meta, "precision": "fp16", "fp16_op_block_list": ",".join(blocked)})
    return m16


def _restore_fp32_constants(original: Any, converted: Any) -> None:
    """Cast(to=float) of an fp16 initializer → the original fp32 initializer (exact constants for blocked ops)."""
    from onnx import TensorProto

    g = converted.graph
    orig = {t.name: t for t in original.graph.initializer if t.data_type == TensorProto.FLOAT}
    halves = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT16}
    rename: dict[str, str] = {}
    keep = []
    for node in g.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        src = node.input[0] if node.op_type == "Cast" and node.input else ""
        if to != TensorProto.FLOAT or src not in halves or src not in orig:
            keep.append(node)
            continue
        name = f"{src}__fp32"
        if name not in rename.values():
            t = g.initializer.add()
            t.CopyFrom(orig[src])
            t.name = name
        rename[node.output[0]] = name
    if not rename:
        return
    del g.node[:]
    g.node.extend(keep)
    for node in g.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
    for out in g.output:
        if out.name in rename:  # never the case for keep_io_types graphs; keep the graph valid regardless
            raise RuntimeError(f"fp16 conversion: graph output {out.name} is a constant cast")
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def fp16_name(file: str) -> str:
    return file[: -len(".onnx")] + "_fp16.onnx"


def export_fp16(
    out: Path,
    opts: ExportOptions,
    *,
    specs: dict[str, GraphSpec],
    shapes: list[tuple[int, int, int]],
    failures: list[str],
) -> dict[str, Any]:
    """Convert every fp32 graph written to ``out`` and check each in ORT CPU vs PyTorch fp32."""
    import onnx

    # max |Δ| and the score map's agreement are only reported (random-weight cosine near-ties flip)
    tolerance: dict[str, Any] = dict(atol=float("inf"), rtol=0.0, min_agreement=opts.fp16_min_agreement)
    tolerance.update(agreement_on=("logits",), disabled_optimizers=ORT_CPU_FP16_DISABLED_OPTIMIZERS)
    report: dict[str, Any] = {"op_block_list": op_block_list(), "graphs": {}}
    files = [(kind, spec.file) for kind, spec in specs.items() if (out / spec.file).exists() and kind in opts.graphs]
    if opts.custom_op:
        files += [(k, f) for k, f in custom_op.FILES.items() if (out / f).exists()]
    for kind, file in files:
        dst = out / fp16_name(file)
        t0 = time.perf_counter()
        core.save_model(convert_to_fp16(onnx.load(str(out / file))), dst)
        entry: dict[str, Any] = {"file": dst.name, "mb": round(core.file_mb(dst), 3)}
        core.log(f"{kind} fp16: {dst.name} ({entry['mb']:.1f} MB) in {time.perf_counter() - t0:.1f} s")
        report["graphs"][kind] = entry
        if not opts.check:
            continue
        spec = specs[kind.removesuffix("_custom")]
        with tempfile.TemporaryDirectory() as tmp:
            # custom-op graphs run with the plugin node swapped for its (fp32, cast-wrapped) decomposition
            target = dst if kind in specs else custom_op.decomposed_copy(dst, out_dir=tmp)
            entry["check"] = None  # stays None when the check fails
            core.check_into(entry, failures, "fp16: ", target, spec, spec.module, shapes, **tolerance)
    return report
