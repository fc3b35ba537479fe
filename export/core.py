"""The export core: graph specs, exporting one graph, metadata, saving, and the ONNX Runtime vs PyTorch self-check."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

import weakclip
from weakclip.export.wrappers import ENCODER_OUTPUTS, TAP_NAMES, CoAttentionOnnx, DecoderOnnx, EncoderOnnx, WeakCLIPOnnx
from weakclip.model.model import WeakCLIP

# The one pinned opset: what the dynamo exporter emits natively; LayerNormalization is a single op (≥ 17).
OPSET = 18

# dynamo keeps H and W dynamic; the legacy TorchScript exporter bakes the example token count into the attention
# reshapes (its graph fails at other H, W: the self-check at a second shape rejects it).
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"

FILES = dict(encoder="encoder.onnx", coattention="coattention.onnx", decoder="decoder.onnx", end_to_end="weakclip.onnx")
MIN_GRID = 4  # smallest token-grid side the export traces for (H, W ≥ 4 patches)

# fp32 parity: Δ ≤ atol + rtol · max|reference| per output; argmax agreement ≥ MIN_AGREEMENT for class outputs.
ATOL, RTOL, MIN_AGREEMENT = 1e-3, 1e-4, 0.999


class ExportError(RuntimeError):
    """The export cannot proceed (missing dependency, exporter failure)."""


class ExportInputError(ExportError, ValueError):
    """An input of the export is wrong (e.g. the --int8 calibration images): a usage error for the command line."""


class CheckFailed(RuntimeError):
    """An exported graph does not match PyTorch within tolerance."""


log = logging.getLogger("weakclip.export").info  # one progress line


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - t0:.1f} s")


@dataclass
class GraphSpec:
    """One ONNX graph.  ``dims``: input name → {axis: symbol} ("B" batch, "h"/"w" token grid, "H"/"W" = patch · h/w);
    ``make_inputs(images)``: the graph's inputs by name (extra keys ignored) for normalised images (B, 3, H, W)."""

    kind: str  # written to the metadata: encoder | coattention | decoder | end_to_end | ...
    file: str
    module: torch.nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dims: dict[str, dict[int, str]]
    make_inputs: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    argmax: tuple[str, ...] = ()  # class-channel outputs, compared by argmax agreement too


def graph_specs(model: WeakCLIP, T: torch.Tensor) -> list[GraphSpec]:
    """The four standard graphs for ``model`` with precomputed text embeddings T (K, E)."""
    encoder = EncoderOnnx(model).eval()
    coattn = CoAttentionOnnx(model, T).eval()

    @torch.no_grad()
    def encoded(images: torch.Tensor) -> dict[str, torch.Tensor]:  # the co-attention's and the decoder's inputs
        *taps, g, dense = encoder(images)
        return {**dict(zip(TAP_NAMES, taps, strict=True)), "g": g, "dense": dense, "score_map": coattn(g, dense)}

    def image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": x}

    def spec(kind: str, *rest: Any) -> GraphSpec:
        return GraphSpec(kind, FILES[kind], *rest)

    grid = {0: "B", 2: "h", 3: "w"}
    pixels = {"image": {0: "B", 2: "H", 3: "W"}}
    dec_in = (*TAP_NAMES, "score_map")
    score, logits, both = ("score_map",), ("logits",), ("logits", "score_map")
    return [
        spec("encoder", encoder, ("image",), ENCODER_OUTPUTS, pixels, image),
        spec("coattention", coattn, ("g", "dense"), score, {"g": {0: "B"}, "dense": grid}, encoded, score),
        spec("decoder", DecoderOnnx(model).eval(), dec_in, logits, dict.fromkeys(dec_in, grid), encoded, logits),
        spec("end_to_end", WeakCLIPOnnx(model, T).eval(), ("image",), both, pixels, image, both),
    ]


def example_images(crop: int, patch: int) -> torch.Tensor:
    """Export example: batch 2 (the dynamo exporter fixes a batch-1 example to 1) at a non-square size below the
    crop (H ≠ W, so no symbolic equality between them is assumed), in patch multiples."""
    h = max(2, round(crop / 2 / patch)) * patch
    w = max(3, round(crop * 3 / 4 / patch)) * patch
    if w == h:
        w += patch
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))


def check_shapes(crop: int, patch: int) -> list[tuple[int, int, int]]:
    """(B, H, W) of the export self-check: batch 2 at the crop, batch 1 at a smaller non-square size."""
    h = max(2, round(crop * 0.625 / patch)) * patch
    w = max(2, round(crop * 0.75 / patch)) * patch
    return [(2, crop, crop), (1, h, w)]


def export_graph(spec: GraphSpec, example: dict[str, torch.Tensor], opts: ExportOptions, crop: int, patch: int) -> Any:
    """Trace ``spec.module`` on ``example`` and return the ONNX ModelProto (nothing written)."""
    import onnx

    args = tuple(example[n] for n in spec.input_names)
    names: dict[str, Any] = dict(opset_version=opts.opset, input_names=list(spec.input_names))
    names["output_names"] = list(spec.output_names)
    with warnings.catch_warnings():
        if opts.exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401 - the dynamo exporter needs it; fail with a clear message
            except ImportError:
                raise ExportError("the dynamo exporter needs onnxscript: pip install onnxscript") from None
            # "The axis name: B will not be used, since it shares the same shape constraints with another axis"
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            # Grid sides from 4 (the decoder's stride-32 level is then ≥ 2: no 0/1 specialisation) to the crop's grid.
            h, w = (torch.export.Dim(s, min=MIN_GRID, max=max(MIN_GRID, crop // patch)) for s in "hw")
            sym = {"B": torch.export.Dim("B", min=1, max=4096), "h": h, "w": w, "H": patch * h, "W": patch * w}
            shapes = {n: {ax: sym[s] for ax, s in spec.dims.get(n, {}).items()} or None for n in spec.input_names}
            prog = torch.onnx.export(
                spec.module, args, dynamo=True, dynamic_shapes=shapes, optimize=True, verbose=False, **names
            )
            if prog is None:  # torch returns None only when given no model
                raise ExportError(f"{spec.kind}: the dynamo exporter returned no program")
            proto = prog.model_proto
        else:
            dyn = {n: dict(spec.dims.get(n, {})) for n in spec.input_names}
            dyn.update({n: {0: "B"} for n in spec.output_names})  # outputs: batch first, the rest follows at run time
            buf: Any = BytesIO()  # a file object is accepted
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            fastpath = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)  # aten::_native_multi_head_attention has no ONNX symbolic
            try:
                torch.onnx.export(
                    spec.module, args, buf, dynamo=False, dynamic_axes=dyn, do_constant_folding=True, **names
                )
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)
            proto = onnx.load_from_string(buf.getvalue())
    name_io_dims(proto, patch)
    return proto


def name_io_dims(proto: Any, patch: int) -> None:
    """Readable symbolic dims on the graph I/O instead of the exporter's "s39": B batch, H×W image, h×w token grid."""
    if "image" in {i.name for i in proto.graph.input}:  # sizes follow from the image
        grid, logit = [f"H/{patch}", f"W/{patch}"], ["H/4", "W/4"]
    else:  # sizes follow from the token grid
        grid, logit = ["h", "w"], ["4*h", "4*w"]
    table = {"image": ["B", None, "H", "W"], "g": ["B", None], "logits": ["B", None, *logit]}
    table.update({n: ["B", None, *grid] for n in (*TAP_NAMES, "dense", "score_map")})
    for v in (*proto.graph.input, *proto.graph.output):
        want = table.get(v.name)
        dims = v.type.tensor_type.shape.dim
        if want is None or len(want) != len(dims):
            continue
        for d, label in zip(dims, want, strict=True):
            if label is not None and d.HasField("dim_param"):
                d.dim_param = label


def compose_end_to_end(encoder: Any, coattention: Any, decoder: Any, *, name: str, patch: int) -> Any:
    """The end-to-end graph (image → logits, score_map) from the three part graphs, without tracing the model again.

    The parts meet at their I/O names (tap0..tap3, g, dense from the encoder; score_map from the co-attention); any
    other tensor or node name that two parts both use is prefixed ``<part>/`` in each.  Metadata is not carried."""
    from collections import Counter

    import onnx
    from onnx import helper

    parts = {"encoder": encoder, "coattention": coattention, "decoder": decoder}
    interface = {"image", *ENCODER_OUTPUTS, "score_map", "logits"}
    defined = [
        {*(o for n in m.graph.node for o in n.output), *(t.name for t in m.graph.initializer)} for m in parts.values()
    ]
    tensors = Counter(t for names in defined for t in names - interface)
    node_names = Counter(x for m in parts.values() for x in {n.name for n in m.graph.node})
    graph = onnx.GraphProto(name=name)
    for part, m in parts.items():

        def rename(x: str, part: str = part) -> str:
            return f"{part}/{x}" if tensors[x] > 1 else x

        for n in m.graph.node:
            c = graph.node.add()
            c.CopyFrom(n)
            c.name = f"{part}/{n.name}" if node_names[n.name] > 1 else n.name
            c.input[:] = [rename(x) for x in n.input]  # "" (an omitted optional input) stays ""
            c.output[:] = [rename(x) for x in n.output]
        for src, dst in ((m.graph.initializer, graph.initializer), (m.graph.value_info, graph.value_info)):
            for t in src:
                dst.add().CopyFrom(t)
                dst[-1].name = rename(t.name)
    graph.input.extend(encoder.graph.input)
    outputs = {o.name: o for m in (decoder, coattention) for o in m.graph.output}
    graph.output.extend([outputs["logits"], outputs["score_map"]])
    opsets: dict[str, int] = {}  # the highest version of each domain
    for o in (o for m in parts.values() for o in m.opset_import):
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        producer_name=encoder.producer_name,
        producer_version=encoder.producer_version,
        functions=list({(f.domain, f.name): f for m in parts.values() for f in m.functions}.values()),
    )
    model.ir_version = max(m.ir_version for m in parts.values())
    name_io_dims(model, patch)
    return model


def model_metadata(model: WeakCLIP, *, kind: str, opset: int, exporter: str) -> dict[str, str]:
    cfg = model.config
    return {
        "graph": kind,
        **{k: json.dumps(list(getattr(cfg, k))) for k in ("class_names", "mean", "std")},
        "crop_size": str(cfg.crop_size),
        "size_divisor": str(cfg.patch_size),
        "config": json.dumps(cfg.to_dict()),
        "weakclip_version": weakclip.__version__,
        "opset": str(opset),
        "exporter": exporter,
        "precision": "fp32",
        "torch_version": torch.__version__,
    }


def set_metadata(model_proto: Any, meta: dict[str, str]) -> None:
    from onnx.helper import set_model_props

    set_model_props(model_proto, {**{k: v for k, v in props(model_proto).items() if k not in meta}, **meta})


def props(model_proto: Any) -> dict[str, str]:
    return {p.key: p.value for p in model_proto.metadata_props}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an .onnx file (without loading external weights)."""
    import onnx

    return props(onnx.load(str(path), load_external_data=False))


def simplify(model_proto: Any) -> Any:
    """onnxslim (constant folding, dead-node removal, pattern fusion); metadata is carried over."""
    try:
        import onnxslim
    except ImportError:
        raise ExportError("--simplify needs onnxslim: pip install onnxslim") from None
    meta = props(model_proto)
    slim = onnxslim.slim(model_proto)
    set_metadata(slim, meta)
    return slim


def save_model(model_proto: Any, path: Path) -> Path:
    """Write a single-file model (< 2 GB) or the model plus ``<name>.data`` beside it, atomically: written and fully
    checked in a hidden temporary folder, then renamed into place (data first), so no truncated model is left."""
    import onnx

    from weakclip.data.io import commit_file, output_error

    big = model_proto.ByteSize() >= 2**31 - 64 * 2**20  # protobuf's 2 GB limit, with headroom
    data = path.with_name(path.name + ".data")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as tmpdir:
            tmp = Path(tmpdir) / path.name
            onnx.save_model(model_proto, str(tmp), save_as_external_data=big, location=data.name if big else None)
            onnx.checker.check_model(str(tmp), full_check=True)
            if big:
                commit_file(tmp.with_name(data.name), data)
            commit_file(tmp, path)
            if not big and data.exists():
                data.unlink()  # a stale external-data file of an earlier, larger model of that name
    except OSError as e:
        raise output_error(path, e) from e
    return path


def file_mb(path: Path) -> float:
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 2**20


def ort_session(path: str | os.PathLike, disabled_optimizers: Sequence[str] = ()) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=cpu, disabled_optimizers=list(disabled_optimizers))


def check_graph(
    path: Path,
    spec: GraphSpec,
    reference: Callable[..., Any],
    shapes: Sequence[tuple[int, int, int]],
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    min_agreement: float = MIN_AGREEMENT,
    disabled_optimizers: Sequence[str] = (),
    agreement_on: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Run ``path`` in ONNX Runtime (CPU) and ``reference`` in PyTorch on random images of each (B, H, W); CheckFailed
    when out of tolerance.  ``agreement_on``: outputs whose argmax agreement is enforced (default: all)."""
    sess = ort_session(path, disabled_optimizers=disabled_optimizers)
    gen = torch.Generator().manual_seed(1)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    for B, H, W in shapes:
        where = f"{path.name} B={B} {H}×{W}"
        inputs = spec.make_inputs(torch.randn(B, 3, H, W, generator=gen))
        with torch.no_grad():
            ref = reference(*(inputs[n] for n in spec.input_names))
        ref_np = [t.float().numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
        try:
            got = sess.run(list(spec.output_names), {n: inputs[n].numpy() for n in spec.input_names})
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types; report them as a failed check
            msg = f"{where}: ONNX Runtime failed: {str(e).splitlines()[0]}"
            log(f"  FAIL {msg}")
            failures.append(msg)
            results.append({"shape": [B, 3, H, W], "error": msg})
            continue
        stats: dict[str, dict[str, float]] = {}
        results.append({"shape": [B, 3, H, W], "outputs": stats})
        for name, g, r in zip(spec.output_names, got, ref_np, strict=True):
            if g.shape != r.shape:
                raise CheckFailed(f"output {name}: shape {tuple(g.shape)} vs PyTorch {tuple(r.shape)}")
            s = stats[name] = {
                "max_abs_diff": float(np.abs(g.astype(np.float64) - r).max(initial=0.0)),
                "max_abs_ref": float(np.abs(r).max(initial=0.0)),
                "finite": bool(np.isfinite(g).all()),
            }
            if name in spec.argmax:
                s["argmax_agreement"] = float(np.mean(g.argmax(1) == r.argmax(1)))
            ok = bool(s["finite"]) and s["max_abs_diff"] <= atol + rtol * s["max_abs_ref"]
            if agreement_on is None or name in agreement_on:
                ok = ok and s.get("argmax_agreement", 1.0) >= min_agreement
            agree = f", argmax agreement {100 * s['argmax_agreement']:.3f} %" if "argmax_agreement" in s else ""
            log(
                f"  {'ok  ' if ok else 'FAIL'} {where} {name}: max |Δ| {s['max_abs_diff']:.3g} "
                f"(max |ref| {s['max_abs_ref']:.3g}){agree}"
            )
            if not ok:
                failures.append(f"{where} {name}")
    if failures:
        raise CheckFailed(
            f"ONNX Runtime vs PyTorch out of tolerance (atol {atol:g} + rtol {rtol:g}·max|ref|, argmax agreement "
            f"≥ {100 * min_agreement:g} %): {'; '.join(failures)}"
        )
    return results


def check_into(entry: dict[str, Any], failures: list[str], prefix: str, *args: Any, **kw: Any) -> None:
    """``entry["check"] = check_graph(*args, **kw)``; a failed check goes to ``failures`` (after ``prefix``) instead."""
    try:
        entry["check"] = check_graph(*args, **kw)
    except CheckFailed as e:
        failures.append(f"{prefix}{e}")


@dataclass
class ExportOptions:
    opset: int = OPSET
    exporter: str = DEFAULT_EXPORTER
    simplify: bool = False  # run onnxslim on every graph
    fp16: bool = False  # also write <graph>_fp16.onnx
    custom_op: bool = False  # also write the TensorRT custom-op variant
    check: bool = True  # ONNX Runtime vs PyTorch after every export
    graphs: tuple[str, ...] = tuple(FILES)  # which standard graphs to write
    atol: float = ATOL
    rtol: float = RTOL
    min_agreement: float = MIN_AGREEMENT
    fp16_min_agreement: float = 0.99  # fp16 graphs vs PyTorch fp32 (see export.fp16 for why 99 %)
    int8_calibration: str | None = None  # image folder / list file: also write weakclip_int8.onnx
    int8_calibration_count: int = 16  # calibration windows for the static int8 convolutions

    @property
    def tolerance(self) -> dict[str, float]:  # the fp32 check's keyword arguments of check_graph
        return {"atol": self.atol, "rtol": self.rtol, "min_agreement": self.min_agreement}


def versions() -> dict[str, str]:
    v = {"weakclip": weakclip.__version__, "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "onnxscript", "onnxslim", "onnxconverter_common"):
        with contextlib.suppress(Exception):  # optional packages
            v[mod] = __import__(mod).__version__
    return v
