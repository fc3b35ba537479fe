"""The export core: graph specs, exporting one graph, metadata, saving, and the ONNX Runtime vs PyTorch self-check.

Every export variant imports from here and nothing imports back, so the export layer has no import circle::

    wrappers.py   torch modules the graphs are traced from (imports the model only)
    core.py       GraphSpec + the four standard graphs, export_graph, metadata, save_model, check_graph,
                  ExportOptions (imports wrappers)
    custom_op.py  TensorRT custom-op variant (imports core, wrappers, weakclip.model.plugin_names)
    fp16.py       fp16 graphs (imports core, custom_op)
    quantize.py   int8 graph for ONNX Runtime on CPU (imports core)
    pipeline.py   export_model: the whole export, calling the variants (imports all of the above)
    to_onnx.py    the weakclip-export command line (imports pipeline, core)

Progress goes to the ``weakclip.export`` logger (the command line prints its INFO lines on stdout).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import weakclip
from weakclip.export.wrappers import (
    ENCODER_OUTPUTS,
    TAP_NAMES,
    CoAttentionOnnx,
    DecoderOnnx,
    EncoderOnnx,
    WeakCLIPOnnx,
)
from weakclip.model.model import WeakCLIP

logger = logging.getLogger("weakclip.export")


# The ONE pinned opset of every exported graph.  18: the opset torch's dynamo exporter (onnxscript torchlib) emits
# natively (any other value goes through the ONNX version converter); LayerNormalization is a single op (≥ 17);
# TensorRT 10/11's ONNX parser and ONNX Runtime ≥ 1.14 support it.
OPSET = 18

# Exporter choice.  "dynamo" (torch.export-based; needs onnxscript) is the default because it is the one that keeps
# H and W dynamic here: it traces symbolic sizes through open_clip's nn.MultiheadAttention and our positional-table
# resize, and one graph runs at every (B, H, W).  The legacy TorchScript exporter, measured on torch 2.14, (a) hits
# the MHA fast path (aten::_native_multi_head_attention has no ONNX symbolic) and, with the fast path disabled,
# (b) bakes the example token count into the reshapes of F.multi_head_attention_forward, so the graph fails at any
# other H, W ("cannot reshape {1025,1,64} to {321,2,32}").  It stays selectable for comparison; the self-check at a
# second shape then rejects it.
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"

FILES = {
    "encoder": "encoder.onnx",
    "coattention": "coattention.onnx",
    "decoder": "decoder.onnx",
    "end_to_end": "weakclip.onnx",
}
TWO_GB = 2**31
MIN_GRID = 4  # smallest token-grid side the export traces for (H, W ≥ 4 patches)

# Default parity tolerances (fp32).  Δ ≤ atol + rtol · max|reference| per output; argmax over classes must agree
# on ≥ min_agreement of the pixels for logits and score maps.
ATOL = 1e-3
RTOL = 1e-4
MIN_AGREEMENT = 0.999


class ExportError(RuntimeError):
    """The export cannot proceed (missing dependency, exporter failure)."""


class ExportInputError(ExportError, ValueError):
    """An input of the export is wrong (e.g. the --int8 calibration images): a usage error for the command line."""


class CheckFailed(RuntimeError):
    """An exported graph does not match PyTorch within tolerance."""


def log(msg: str) -> None:
    """One progress line (logger ``weakclip.export``, level INFO)."""
    logger.info(msg)


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - t0:.1f} s")


# ----------------------------------------------------------------------------------------------------------------
# what to export


@dataclass
class GraphSpec:
    """One ONNX graph: the wrapper module, named inputs and outputs, and which axes are dynamic.

    ``dims`` maps input name → {axis: symbol}, symbols: "B" batch, "h"/"w" token grid, "H"/"W" = patch · h/w
    (image pixels); inputs not listed are static.  ``make_inputs(images)`` gives the graph's inputs for a batch of
    normalised images (B, 3, H, W) (for graphs that do not start from the image, through the PyTorch encoder).
    """

    kind: str  # graph kind written to the metadata: encoder | coattention | decoder | end_to_end | ...
    file: str
    module: torch.nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dims: dict[str, dict[int, str]]
    make_inputs: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    compare: dict[str, str] = field(default_factory=dict)  # output name → "argmax" for class-channel outputs


def graph_specs(model: WeakCLIP, T: torch.Tensor) -> list[GraphSpec]:
    """The four standard graphs of SPEC §6 for ``model`` with precomputed text embeddings T (K, E)."""
    encoder = EncoderOnnx(model).eval()

    @torch.no_grad()
    def encoded(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(ENCODER_OUTPUTS, encoder(images), strict=True))

    coattn = CoAttentionOnnx(model, T).eval()

    def decoder_inputs(images: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = encoded(images)
        with torch.no_grad():
            S = coattn(enc["g"], enc["dense"])
        return {**{k: enc[k] for k in TAP_NAMES}, "score_map": S}

    grid = {0: "B", 2: "h", 3: "w"}
    image = {"image": {0: "B", 2: "H", 3: "W"}}
    return [
        GraphSpec("encoder", FILES["encoder"], encoder, ("image",), ENCODER_OUTPUTS, image, lambda x: {"image": x}),
        GraphSpec(
            "coattention",
            FILES["coattention"],
            coattn,
            ("g", "dense"),
            ("score_map",),
            {"g": {0: "B"}, "dense": grid},
            lambda x: {k: v for k, v in encoded(x).items() if k in ("g", "dense")},
            {"score_map": "argmax"},
        ),
        GraphSpec(
            "decoder",
            FILES["decoder"],
            DecoderOnnx(model).eval(),
            (*TAP_NAMES, "score_map"),
            ("logits",),
            {name: grid for name in (*TAP_NAMES, "score_map")},
            decoder_inputs,
            {"logits": "argmax"},
        ),
        GraphSpec(
            "end_to_end",
            FILES["end_to_end"],
            WeakCLIPOnnx(model, T).eval(),
            ("image",),
            ("logits", "score_map"),
            image,
            lambda x: {"image": x},
            {"logits": "argmax", "score_map": "argmax"},
        ),
    ]


def example_images(crop: int, patch: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Export example (batch 2: the dynamo exporter fixes a batch-1 example to 1) at a non-square size below the
    crop (H ≠ W so no symbolic equality between them is assumed): (2, 3, ~crop/2, ~3·crop/4) in patch multiples."""
    h = max(2, round(crop / 2 / patch)) * patch
    w = max(3, round(crop * 3 / 4 / patch)) * patch
    if w == h:
        w += patch
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def check_shapes(crop: int, patch: int) -> list[tuple[int, int, int]]:
    """(B, H, W) of the export self-check: batch 2 at the crop, batch 1 at a smaller non-square size."""
    h = max(2, round(crop * 0.625 / patch)) * patch
    w = max(2, round(crop * 0.75 / patch)) * patch
    return [(2, crop, crop), (1, h, w)]


# ----------------------------------------------------------------------------------------------------------------
# export one graph


@contextlib.contextmanager
def _mha_fastpath(enabled: bool) -> Iterator[None]:
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)


def _dynamo_shapes(spec: GraphSpec, crop: int, patch: int) -> dict[str, Any]:
    # Token-grid sides from 4 (the decoder's stride-32 level is then ≥ 2, no 0/1 specialisation while tracing) to
    # the crop's grid; the graph itself has no size asserts.
    grid = max(MIN_GRID, crop // patch)
    B = torch.export.Dim("B", min=1, max=4096)
    h = torch.export.Dim("h", min=MIN_GRID, max=grid)
    w = torch.export.Dim("w", min=MIN_GRID, max=grid)
    sym = {"B": B, "h": h, "w": w, "H": patch * h, "W": patch * w}
    return {name: {ax: sym[s] for ax, s in spec.dims.get(name, {}).items()} or None for name in spec.input_names}


def export_graph(
    spec: GraphSpec,
    example: dict[str, torch.Tensor],
    *,
    exporter: str = DEFAULT_EXPORTER,
    opset: int = OPSET,
    crop: int,
    patch: int,
) -> Any:
    """Trace ``spec.module`` on ``example`` and return the ONNX ModelProto (nothing written)."""
    import onnx

    args = tuple(example[n] for n in spec.input_names)
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401 - the dynamo exporter needs it; fail with a clear message
        except ImportError:
            raise ExportError("the dynamo exporter needs onnxscript: pip install onnxscript") from None
        with warnings.catch_warnings():
            # "The axis name: B will not be used, since it shares the same shape constraints with another axis"
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            prog = torch.onnx.export(
                spec.module,
                args,
                dynamo=True,
                opset_version=opset,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_shapes=_dynamo_shapes(spec, crop, patch),
                optimize=True,
                verbose=False,
            )
        if prog is None:  # torch returns None only when given no model
            raise ExportError(f"{spec.kind}: the dynamo exporter returned no program")
        proto = prog.model_proto
        name_io_dims(proto, patch)
        return proto
    if exporter == "torchscript":
        import io

        dyn: dict[str, dict[int, str]] = {n: dict(spec.dims.get(n, {})) for n in spec.input_names}
        for n in spec.output_names:  # every output: batch first; the rest follows from the inputs at run time
            dyn[n] = {0: "B"}
        buf = io.BytesIO()
        with _mha_fastpath(False), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                spec.module,
                args,
                buf,  # type: ignore[arg-type]  # a file object is accepted
                dynamo=False,
                opset_version=opset,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_axes=dyn,
                do_constant_folding=True,
            )
        proto = onnx.load_from_string(buf.getvalue())
        name_io_dims(proto, patch)
        return proto
    raise ExportError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")


def name_io_dims(proto: Any, patch: int) -> None:
    """Readable symbolic dims on the graph inputs/outputs (the exporter writes e.g. "s39"): B batch, H×W image,
    h×w token grid.  Only symbolic dims are renamed; static ones (channels, K) stay numbers."""
    names = {i.name for i in proto.graph.input}
    if "image" in names:  # sizes follow from the image
        grid, logit = [f"H/{patch}", f"W/{patch}"], ["H/4", "W/4"]
    else:  # sizes follow from the token grid
        grid, logit = ["h", "w"], ["4*h", "4*w"]
    table = {"image": ["B", None, "H", "W"], "g": ["B", None], "logits": ["B", None, *logit]}
    for n in (*TAP_NAMES, "dense", "score_map"):
        table[n] = ["B", None, *grid]
    for v in (*proto.graph.input, *proto.graph.output):
        want = table.get(v.name)
        dims = v.type.tensor_type.shape.dim
        if want is None or len(want) != len(dims):
            continue
        for d, label in zip(dims, want, strict=True):
            if label is not None and d.HasField("dim_param"):
                d.dim_param = label


def model_metadata(model: WeakCLIP, *, kind: str, opset: int, exporter: str, precision: str = "fp32") -> dict[str, str]:
    cfg = model.config
    return {
        "graph": kind,
        "class_names": json.dumps(list(cfg.class_names)),
        "mean": json.dumps(list(cfg.mean)),
        "std": json.dumps(list(cfg.std)),
        "crop_size": str(cfg.crop_size),
        "size_divisor": str(cfg.patch_size),
        "config": json.dumps(cfg.to_dict()),
        "weakclip_version": weakclip.__version__,
        "opset": str(opset),
        "exporter": exporter,
        "precision": precision,
        "torch_version": torch.__version__,
    }


def set_metadata(model_proto: Any, meta: dict[str, str]) -> None:
    keep = [p for p in model_proto.metadata_props if p.key not in meta]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    for k, v in meta.items():
        p = model_proto.metadata_props.add()
        p.key, p.value = k, v


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an .onnx file (without loading external weights)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def simplify(model_proto: Any) -> Any:
    """onnxslim (constant folding, dead-node removal, pattern fusion); metadata is carried over."""
    try:
        import onnxslim
    except ImportError:
        raise ExportError("--simplify needs onnxslim: pip install onnxslim") from None
    meta = {p.key: p.value for p in model_proto.metadata_props}
    slim = onnxslim.slim(model_proto)
    set_metadata(slim, meta)
    return slim


def save_model(model_proto: Any, path: Path) -> Path:
    """Write a single-file model (< 2 GB) or the model plus ``<name>.data`` beside it, atomically: the files are
    written and fully checked in a hidden temporary folder beside ``path``, flushed to disk, then renamed into place
    (the data file first, the model last), so a full disk or a kill never leaves a truncated model under its name."""
    import tempfile

    import onnx

    from weakclip.data.io import commit_file, output_error

    size = model_proto.ByteSize()
    big = size >= TWO_GB - 64 * 2**20
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
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return total / 2**20


# ----------------------------------------------------------------------------------------------------------------
# self-check: ONNX Runtime vs PyTorch


def ort_session(path: str | os.PathLike, threads: int | None = None, disabled_optimizers: Sequence[str] = ()) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    kw = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kw)


def compare_outputs(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray], argmax: Sequence[str] = ()
) -> dict[str, dict[str, float]]:
    """Per output: max |Δ|, max |reference|, and for class-channel outputs the argmax agreement over axis 1."""
    out = {}
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape:
            raise CheckFailed(f"output {name}: shape {tuple(g.shape)} vs PyTorch {tuple(r.shape)}")
        d = {
            "max_abs_diff": float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0,
            "max_abs_ref": float(np.max(np.abs(r))) if r.size else 0.0,
            "finite": bool(np.isfinite(g).all()),
        }
        if name in argmax:
            d["argmax_agreement"] = float(np.mean(g.argmax(1) == r.argmax(1)))
        out[name] = d
    return out


def within(stats: dict[str, float], atol: float, rtol: float, min_agreement: float, agreement: bool = True) -> bool:
    ok = bool(stats["finite"]) and stats["max_abs_diff"] <= atol + rtol * stats["max_abs_ref"]
    return ok and (not agreement or stats.get("argmax_agreement", 1.0) >= min_agreement)


def check_graph(
    path: Path,
    spec: GraphSpec,
    reference: torch.nn.Module,
    shapes: Sequence[tuple[int, int, int]],
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    min_agreement: float = MIN_AGREEMENT,
    enforce: bool = True,
    seed: int = 1,
    disabled_optimizers: Sequence[str] = (),
    agreement_on: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Run ``path`` in ONNX Runtime (CPU) and ``reference`` in PyTorch on random images of each (B, H, W).

    Logs one line per shape and output; raises CheckFailed (after logging) when ``enforce`` and a result is out
    of tolerance.  ``agreement_on``: outputs whose argmax agreement is enforced (default: all class-channel outputs;
    the others' agreement is only reported).
    """
    sess = ort_session(path, disabled_optimizers=disabled_optimizers)
    gen = torch.Generator().manual_seed(seed)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    for B, H, W in shapes:
        images = torch.randn(B, 3, H, W, generator=gen)
        inputs = spec.make_inputs(images)
        with torch.no_grad():
            ref = reference(*(inputs[n] for n in spec.input_names))
        ref = ref if isinstance(ref, tuple) else (ref,)
        ref_np = {n: t.float().numpy() for n, t in zip(spec.output_names, ref, strict=True)}
        try:
            got = sess.run(list(spec.output_names), {n: inputs[n].numpy() for n in spec.input_names})
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types; report them as a failed check
            msg = f"{path.name} B={B} {H}×{W}: ONNX Runtime failed: {str(e).splitlines()[0]}"
            log(f"  FAIL {msg}")
            failures.append(msg)
            results.append({"shape": [B, 3, H, W], "error": msg})
            continue
        stats = compare_outputs(dict(zip(spec.output_names, got, strict=True)), ref_np, list(spec.compare))
        results.append({"shape": [B, 3, H, W], "outputs": stats})
        for name, s in stats.items():
            ok = within(s, atol, rtol, min_agreement, agreement_on is None or name in agreement_on)
            agree = f", argmax agreement {100 * s['argmax_agreement']:.3f} %" if "argmax_agreement" in s else ""
            log(
                f"  {'ok  ' if ok else 'FAIL'} {path.name} B={B} {H}×{W} {name}: max |Δ| {s['max_abs_diff']:.3g} "
                f"(max |ref| {s['max_abs_ref']:.3g}){agree}"
            )
            if not ok:
                failures.append(f"{path.name} B={B} {H}×{W} {name}")
    if failures and enforce:
        raise CheckFailed(
            f"ONNX Runtime vs PyTorch out of tolerance (atol {atol:g} + rtol {rtol:g}·max|ref|, argmax agreement "
            f"≥ {100 * min_agreement:g} %): {'; '.join(failures)}"
        )
    return results


# ----------------------------------------------------------------------------------------------------------------
# options of the whole export (run by weakclip.export.pipeline.export_model)


@dataclass
class ExportOptions:
    opset: int = OPSET  # ONNX opset of every graph
    exporter: str = DEFAULT_EXPORTER  # "dynamo" (default, see EXPORTERS) or "torchscript"
    simplify: bool = False  # run onnxslim on every graph
    fp16: bool = False  # also write <graph>_fp16.onnx (onnxconverter-common, fp32 I/O)
    custom_op: bool = False  # also write the TensorRT custom-op variant
    check: bool = True  # ONNX Runtime vs PyTorch after every export
    graphs: tuple[str, ...] = tuple(FILES)  # which standard graphs to write
    atol: float = ATOL
    rtol: float = RTOL
    min_agreement: float = MIN_AGREEMENT
    fp16_min_agreement: float = 0.99  # fp16 graphs vs PyTorch fp32 (see export.fp16 for why 99 %)
    int8_calibration: str | None = None  # image folder / list file: also write weakclip_int8.onnx (export.quantize)
    int8_calibration_count: int = 16  # calibration windows for the static int8 convolutions


def text_embeddings(model: WeakCLIP) -> torch.Tensor:
    """T (K, E): the prompt learner + text tower, run once."""
    with torch.no_grad():
        return model.text_embeddings().detach().float().clone()


def versions() -> dict[str, str]:
    v = {"weakclip": weakclip.__version__, "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "onnxscript", "onnxslim", "onnxconverter_common"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages
            pass
    return v
