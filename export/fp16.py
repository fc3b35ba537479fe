"""FP16 variants of the exported graphs (TensorRT 11 strongly typed networks, ONNX Runtime CUDA EP).

TensorRT 11 builds *strongly typed* networks: the precision of every layer is the ONNX tensor type, so fp16 must be
in the graph itself (TRT 10's "FP16 builder flag" is gone).  We convert with onnxconverter-common's float16 converter:

* ``keep_io_types=True``: inputs/outputs stay float32 (the engines feed and read fp32; Casts sit at the edges);
* ``FP16_OP_BLOCK_LIST``: the numerically sensitive ops stay fp32 with Casts around them: LayerNormalization, the
  GroupNorm decomposition (InstanceNormalization), Softmax, the reductions and powers of any normalisation
  (ReduceMean/ReduceL2/ReduceSum/Pow/Sqrt), and Div/Clip/Erf (the cosine score map's ``x / max(|x|, eps)`` with
  eps = 1e-12, which is 0 in fp16, and GELU's erf), on top of the converter's default block list (Resize, Range,
  Min/Max, TopK, ...);
* constants that only reach fp32 (blocked) ops keep their fp32 values: the converter first rounds every float
  initializer to fp16 (1e-12 → 1e-7, with a warning) and casts it back; :func:`_restore_fp32_constants` undoes that.

Validation on ONNX Runtime CPU: the CPU EP runs fp16 ops that have no fp16 kernel in fp32 (its InsertCast pass), so
a CPU run checks that the graph is well formed and that the fp16 storage of weights/activations keeps the result —
not GPU fp16 arithmetic.  The check compares with PyTorch fp32 and *reports* max |Δ|; the only assertions are finite outputs
and an argmax agreement of the logits of ≥ 99 % (``ExportOptions.fp16_min_agreement``; the score map's agreement is
reported only: random-weight cosine scores sit within a few 1e-3 of each other).  Why 99 % and not 99.9 %: fp16 keeps
11 significant bits (relative rounding ≈ 4.9e-4), and the logits of a model pass through ~12 transformer blocks plus
the decoder, so |Δlogit| of 1e-3…1e-2 is normal; every pixel whose top-2 logit margin is below that may flip, and
random-weight test models (no training to separate classes) have many such near-ties — we measured 99.97 % on the
tiny preset at 512².  A trained model has larger margins, and TensorRT's own fp16 check is done on the GPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from weakclip.export import core, custom_op
from weakclip.export.core import ExportOptions, GraphSpec

# ONNX Runtime 1.32's CPU NCHWc layout pass crashes (segfault at session creation) on the fp16 encoder graph
# (found by bisecting the optimisers); CPU sessions of fp16 graphs disable it.  Not needed on the CUDA EP.
ORT_CPU_FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)

FP16_EXTRA_BLOCK = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceL2",
    "ReduceSumSquare",
    "Pow",
    "Sqrt",
    "Div",
    "Clip",
    "Erf",
)


def op_block_list() -> list[str]:
    """The converter's default block list plus the normalisation/softmax ops kept in fp32."""
    from onnxconverter_common import float16

    return sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_EXTRA_BLOCK))


def convert_to_fp16(model: Any, extra_block: tuple[str, ...] = ()) -> Any:
    """fp32 ModelProto → fp16 ModelProto with fp32 I/O and the ops of :func:`op_block_list` kept in fp32.

    Custom-op nodes (the TensorRT co-attention plugin) are *not* blocked: their inputs, weights included, become
    fp16, which is what the plugin's fp16 kernels expect (one element type for every tensor).
    """
    import warnings

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise RuntimeError("--fp16 needs onnxconverter-common: pip install onnxconverter-common") from None
    meta = {p.key: p.value for p in model.metadata_props}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "number … will be truncated": undone just below
        m16 = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=op_block_list() + list(extra_block), disable_shape_infer=False
        )
    _restore_fp32_constants(model, m16)
    core.set_metadata(m16, {**meta, "precision": "fp16", "fp16_op_block_list": ",".join(op_block_list())})
    return m16


def _restore_fp32_constants(original: Any, converted: Any) -> None:
    """Cast(to=float) of an fp16 initializer → the original fp32 initializer (exact constants for blocked ops)."""
    from onnx import TensorProto

    orig = {t.name: t for t in original.graph.initializer}
    inits = {t.name: t for t in converted.graph.initializer}
    g = converted.graph
    rename: dict[str, str] = {}
    keep = []
    added = set()
    for node in g.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        src = node.input[0] if node.op_type == "Cast" and node.input else ""
        if (
            node.op_type == "Cast"
            and to == TensorProto.FLOAT
            and src in inits
            and inits[src].data_type == TensorProto.FLOAT16
            and src in orig
            and orig[src].data_type == TensorProto.FLOAT
        ):
            name = f"{src}__fp32"
            if name not in added:
                t = TensorProto()
                t.CopyFrom(orig[src])
                t.name = name
                g.initializer.append(t)
                added.add(name)
            rename[node.output[0]] = name
            continue
        keep.append(node)
    if not rename:
        return
    del g.node[:]
    g.node.extend(keep)
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for out in g.output:
        if out.name in rename:  # never the case for keep_io_types graphs; keep the graph valid regardless
            raise RuntimeError(f"fp16 conversion: graph output {out.name} is a constant cast")
    used = {i for n in g.node for i in n.input}
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:
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
    """Convert every fp32 graph written to ``out`` (standard and custom-op) and check the standard ones in ORT."""
    import onnx

    report: dict[str, Any] = {"op_block_list": op_block_list(), "graphs": {}}
    files = [(kind, spec.file) for kind, spec in specs.items() if (out / spec.file).exists() and kind in opts.graphs]
    if opts.custom_op:
        files += [(k, f) for k, f in custom_op.FILES.items() if (out / f).exists()]
    for kind, file in files:
        src = out / file
        dst = out / fp16_name(file)
        t0 = time.perf_counter()
        m16 = convert_to_fp16(onnx.load(str(src)))
        core.save_model(m16, dst)
        entry: dict[str, Any] = {"file": dst.name, "mb": round(core.file_mb(dst), 3)}
        core.log(f"{kind} fp16: {dst.name} ({entry['mb']:.1f} MB) in {time.perf_counter() - t0:.1f} s")
        if opts.check:
            entry["check"] = _check_fp16(dst, kind, specs, shapes, opts, failures)
        report["graphs"][kind] = entry
    return report


def _check_fp16(
    path: Path,
    kind: str,
    specs: dict[str, GraphSpec],
    shapes: list[tuple[int, int, int]],
    opts: ExportOptions,
    failures: list[str],
) -> Any:
    """fp16 graph in ORT CPU vs PyTorch fp32: max |Δ| reported, argmax agreement ≥ opts.fp16_min_agreement."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if kind in specs:
            spec, target = specs[kind], path
        else:  # custom-op graphs: run with the plugin node swapped for its (fp32, cast-wrapped) decomposition
            spec = specs[custom_op.STANDARD_KIND[kind]]
            target = custom_op.decomposed_copy(path, out_dir=tmp)
        try:
            return core.check_graph(
                target,
                spec,
                spec.module,
                shapes,
                atol=float("inf"),
                rtol=0.0,
                min_agreement=opts.fp16_min_agreement,
                disabled_optimizers=ORT_CPU_FP16_DISABLED_OPTIMIZERS,
                agreement_on=("logits",),  # score-map agreement is reported: cosine near-ties of random models flip
            )
        except core.CheckFailed as e:
            failures.append(f"fp16: {e}")
            return None
