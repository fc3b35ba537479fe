"""TensorRT custom-op variant: the co-attention matching as ONE plugin node, and its standard decomposition.

**The node** (identity and layout from ``engines/csrc/plugin_names.json``, the one source of truth shared with the
C++ plugin through the generated ``weakclip_plugin_names.h``; read here through :mod:`weakclip.model.plugin_names`)::

    score_map (B, K, h, w) = <op_type>(g (B, E), dense (B, E, h, w), text (K, E), weights (P,))
        domain "trt.plugins" (ignored by TensorRT's parser, needed by ONNX), attributes:
        plugin_version, plugin_namespace (strings; TensorRT finds the creator by op_type + these two) and the
        creator's PluginFields ``attributes`` (coattn_width, coattn_heads, coattn_layers, coattn_mlp_ratio,
        layer_norm_eps; types from ``attribute_info``).

Why (g, dense) and not (V, T): it is the encoder's output as is (channel-first F), so no transpose/concat nodes sit
between the encoder and the plugin, and the C launcher reads g + F directly (``WeakclipCoAttnParams.global_emb`` /
``dense``).  **How the weights reach the plugin**: as constant *inputs* (initializers), not attributes — ``text`` is
T (K, E) and ``weights`` the packed blob (state-dict tensors flattened and concatenated in the ``packed_weights``
order, per-layer runs repeated layer-major; :func:`weakclip.model.plugin_names.pack_coattention_weights`).  Initializers keep
the weights out of the node attributes (ONNX attributes are copied per node and capped in size by some tools) and
make the fp16 variant convert them like any other weight.

Files written by ``--custom-op``::

    coattention_custom.onnx         g, dense → score_map            (just the plugin node; text + weights constant)
    weakclip_custom.onnx            image → logits, score_map       (encoder.onnx ∘ plugin node ∘ decoder.onnx)
    coattention_decomposition.onnx  g, dense, text, weights → score_map  (standard ONNX: what the node computes)

ONNX Runtime cannot run the plugin node; :func:`swap_in_decomposition` replaces every plugin node by the
decomposition graph (inlined, names prefixed), which is how the export checks the custom-op graphs and how a test
shows they equal the standard graphs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from weakclip.export import core
from weakclip.export.core import GraphSpec
from weakclip.export.wrappers import TAP_NAMES, CoAttentionPackedReference
from weakclip.model import plugin_names
from weakclip.model.model import WeakCLIP

if TYPE_CHECKING:
    from weakclip.export.core import ExportOptions

CUSTOM_DOMAIN = "trt.plugins"  # TensorRT ignores the domain; ONNX needs one that is not the default
CUSTOM_DOMAIN_VERSION = 1
FILES = {"coattention_custom": "coattention_custom.onnx", "end_to_end_custom": "weakclip_custom.onnx"}
DECOMPOSITION_FILE = "coattention_decomposition.onnx"
STANDARD_KIND = {"coattention_custom": "coattention", "end_to_end_custom": "end_to_end"}
PLUGIN_INPUTS = ("g", "dense", "text", "weights")
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm default, used by every LayerNorm of CoAttentionMatching (checked below)


def plugin_spec() -> dict[str, Any]:
    return plugin_names.plugin_spec()


def plugin_attributes(model: WeakCLIP) -> dict[str, int | float]:
    """The creator's PluginFields for ``model``: every name of ``attributes`` in plugin_names.json, typed by
    ``attribute_info``; config fields of the same name, plus layer_norm_eps from the module."""
    spec = plugin_spec()
    cfg = model.config
    eps = {m.eps for m in model.coattention.modules() if isinstance(m, torch.nn.LayerNorm)}
    if eps != {LAYER_NORM_EPS}:
        raise ValueError(f"co-attention LayerNorm eps {sorted(eps)}: the plugin takes one value ({LAYER_NORM_EPS})")
    extra = {"layer_norm_eps": LAYER_NORM_EPS}
    out: dict[str, int | float] = {}
    for name in spec["attributes"]:
        kind = spec["attribute_info"][name][0]
        if hasattr(cfg, name):
            value = getattr(cfg, name)
        elif name in extra:
            value = extra[name]
        else:
            raise ValueError(f"plugin_names.json attribute {name!r} has no source in the WeakCLIP config")
        out[name] = int(value) if kind == "int" else float(value)
    return out


def packed_layout(model: WeakCLIP) -> list[tuple[str, tuple[int, ...]]]:
    """(state-dict name, shape) of every tensor of the packed ``weights`` input, in blob order."""
    cfg = model.config
    layers = cfg.coattn_layers
    names = plugin_names.packed_weight_names(layers)
    shapes = plugin_names.packed_weight_shapes(
        layers, cfg.embed_dim, cfg.coattn_width, cfg.coattn_width * cfg.coattn_mlp_ratio
    )
    return list(zip(names, shapes, strict=True))


def packed_weights(model: WeakCLIP) -> torch.Tensor:
    """The ``weights`` input: (P,) float32."""
    return plugin_names.pack_coattention_weights(model.coattention, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# building the custom graphs


def plugin_node(model: WeakCLIP, inputs: tuple[str, ...] = PLUGIN_INPUTS, output: str = "score_map") -> Any:
    from onnx import helper

    spec = plugin_spec()
    node = helper.make_node(spec["op_type"], list(inputs), [output], name="weakclip_coattention", domain=CUSTOM_DOMAIN)
    attrs = {
        "plugin_version": str(spec["plugin_version"]),
        "plugin_namespace": str(spec["plugin_namespace"]),
        **plugin_attributes(model),  # in the JSON's order (make_node would sort keyword attributes)
    }
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return node


def custom_coattention_graph(model: WeakCLIP, T: torch.Tensor, *, opset: int) -> Any:
    """g (B, E), dense (B, E, h, w) → score_map (B, K, h, w) as one plugin node; text and weights initializers."""
    from onnx import TensorProto, helper, numpy_helper

    cfg = model.config
    E, K = cfg.embed_dim, cfg.num_classes
    graph = helper.make_graph(
        [plugin_node(model)],
        "weakclip_coattention_custom",
        inputs=[
            helper.make_tensor_value_info("g", TensorProto.FLOAT, ["B", E]),
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", E, "h", "w"]),
        ],
        outputs=[helper.make_tensor_value_info("score_map", TensorProto.FLOAT, ["B", K, "h", "w"])],
        initializer=[
            numpy_helper.from_array(T.detach().float().contiguous().numpy(), "text"),
            numpy_helper.from_array(packed_weights(model).numpy(), "weights"),
        ],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CUSTOM_DOMAIN, CUSTOM_DOMAIN_VERSION)],
        producer_name="weakclip-export",
    )


def custom_end_to_end(encoder: Any, coattention_custom: Any, decoder: Any) -> Any:
    """encoder.onnx ∘ plugin graph ∘ decoder.onnx → image → logits, score_map (internal names prefixed per part)."""
    from onnx import compose

    enc = compose.add_prefix(encoder, "encoder/")  # add_prefix copies (inplace=False)
    co = compose.add_prefix(coattention_custom, "coattention/")
    dec = compose.add_prefix(decoder, "decoder/")
    _align_ir(enc, co, dec)
    for part in (enc, co, dec):  # per-graph metadata ("graph": encoder/decoder) would conflict; set by the caller
        del part.metadata_props[:]
    m = compose.merge_models(
        enc,
        co,
        io_map=[("encoder/g", "coattention/g"), ("encoder/dense", "coattention/dense")],
        outputs=[*(f"encoder/{t}" for t in TAP_NAMES), "coattention/score_map"],
    )
    m = compose.merge_models(
        m,
        dec,
        io_map=[*((f"encoder/{t}", f"decoder/{t}") for t in TAP_NAMES), ("coattention/score_map", "decoder/score_map")],
        outputs=["decoder/logits", "coattention/score_map"],
    )
    for old, new in (("encoder/image", "image"), ("decoder/logits", "logits"), ("coattention/score_map", "score_map")):
        rename_value(m.graph, old, new)
    outs = {o.name: o for o in m.graph.output}
    ordered = [outs["logits"], outs["score_map"]]  # the standard end-to-end order
    del m.graph.output[:]
    m.graph.output.extend(ordered)
    m.graph.name = "weakclip_custom"
    return m


def _align_ir(*models: Any) -> None:
    """merge_models needs equal IR versions and opsets per domain: use the highest of each."""
    ir = max(m.ir_version for m in models)
    opsets: dict[str, int] = {}
    for m in models:
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    for m in models:
        m.ir_version = ir
        for o in m.opset_import:
            o.version = opsets[o.domain]


def rename_value(graph: Any, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph`` (node I/O, graph I/O, value_info, initializers)."""
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for i, x in enumerate(n.output):
            if x == old:
                n.output[i] = new
    for seq in (graph.input, graph.output, graph.value_info):
        for v in seq:
            if v.name == old:
                v.name = new
    for t in graph.initializer:
        if t.name == old:
            t.name = new


# ----------------------------------------------------------------------------------------------------------------
# the standard decomposition and the swap back


def decomposition_spec(model: WeakCLIP, T: torch.Tensor, encoder_spec: GraphSpec) -> GraphSpec:
    """GraphSpec of the node's standard decomposition (g, dense, text, weights → score_map)."""
    cfg = model.config
    module = CoAttentionPackedReference(packed_layout(model), heads=cfg.coattn_heads, layers=cfg.coattn_layers)
    blob = packed_weights(model)
    text = T.detach().float()

    def make_inputs(images: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = encoder_spec.make_inputs(images)
        with torch.no_grad():
            outs = dict(zip(encoder_spec.output_names, encoder_spec.module(enc["image"]), strict=True))
        return {"g": outs["g"], "dense": outs["dense"], "text": text, "weights": blob}

    return GraphSpec(
        "coattention_decomposition",
        DECOMPOSITION_FILE,
        module.eval(),
        PLUGIN_INPUTS,
        ("score_map",),
        {"g": {0: "B"}, "dense": {0: "B", 2: "h", 3: "w"}},
        make_inputs,
        {"score_map": "argmax"},
    )


def swap_in_decomposition(model: Any, decomposition: Any) -> Any:
    """A copy of ``model`` with every plugin node replaced by the nodes of ``decomposition`` (inlined).

    The decomposition's inputs (g, dense, text, weights) are bound to the node's inputs and its output to the node's
    output; its other tensors get the prefix ``<node name>/``.  The node's attributes must match the decomposition's
    (``plugin_attributes`` in its metadata).  fp16 nodes (fp16 weights) get Casts to fp32 around the fp32
    decomposition.  The custom domain import is dropped when no plugin node is left.
    """
    import json

    import onnx
    from onnx import TensorProto, helper

    spec = plugin_spec()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    dmeta = {p.key: p.value for p in decomposition.metadata_props}
    want = json.loads(dmeta.get("plugin_attributes", "{}"))
    dg = decomposition.graph
    d_inputs = [i.name for i in dg.input]
    d_outputs = [o.name for o in dg.output]
    if d_inputs != list(PLUGIN_INPUTS) or len(d_outputs) != 1:
        raise ValueError(f"decomposition must map {PLUGIN_INPUTS} → one output, has {d_inputs} → {d_outputs}")
    types = {t.name: t.data_type for t in g.initializer}
    new_nodes = []
    added_inits = []
    swapped = 0
    for node in g.node:
        if node.op_type != spec["op_type"] or node.domain != CUSTOM_DOMAIN:
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for k, v in want.items():
            got = attrs.get(k)
            if got is None or abs(float(got) - float(v)) > 1e-12 * max(1.0, abs(float(v))):
                raise ValueError(f"plugin node {node.name}: attribute {k}={got}, decomposition was built for {v}")
        prefix = f"{node.name or 'plugin'}/"
        fp16 = types.get(node.input[3]) == TensorProto.FLOAT16
        bind: dict[str, str] = {}
        for dname, src in zip(d_inputs, node.input, strict=True):
            if fp16:
                cast = f"{prefix}{dname}_fp32"
                new_nodes.append(
                    helper.make_node("Cast", [src], [cast], name=f"{prefix}cast_{dname}", to=TensorProto.FLOAT)
                )
                bind[dname] = cast
            else:
                bind[dname] = src
        result = f"{prefix}score_map_fp32" if fp16 else node.output[0]
        bind[d_outputs[0]] = result

        def name(x: str, bind: dict[str, str] = bind, prefix: str = prefix) -> str:
            return bind.get(x, f"{prefix}{x}" if x else x)

        for t in dg.initializer:
            c = onnx.TensorProto()
            c.CopyFrom(t)
            c.name = name(t.name)
            added_inits.append(c)
        for dn in dg.node:
            n = onnx.NodeProto()
            n.CopyFrom(dn)
            n.name = prefix + dn.name
            n.input[:] = [name(x) for x in dn.input]
            n.output[:] = [name(x) for x in dn.output]
            new_nodes.append(n)
        if fp16:
            new_nodes.append(
                helper.make_node("Cast", [result], [node.output[0]], name=f"{prefix}cast_out", to=TensorProto.FLOAT16)
            )
        swapped += 1
    if not swapped:
        raise ValueError(f"no {spec['op_type']} node (domain {CUSTOM_DOMAIN}) in the model")
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(added_inits)
    for f in decomposition.functions:  # exporter-emitted local functions, if any
        if not any(x.name == f.name and x.domain == f.domain for x in out.functions):
            out.functions.append(f)
    have = {o.domain for o in out.opset_import}
    for o in decomposition.opset_import:
        if o.domain not in have:
            out.opset_import.append(o)
    keep = [o for o in out.opset_import if o.domain != CUSTOM_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def decomposed_copy(
    path: str | Path, decomposition: str | Path | None = None, out_dir: str | Path | None = None
) -> Path:
    """Write ``path`` with its plugin nodes swapped for the decomposition (default: the file beside it) into
    ``out_dir`` (default: a new temporary folder, the caller's to delete) and return the new file (for ORT)."""
    import onnx

    path = Path(path)
    dec = onnx.load(str(decomposition or path.with_name(DECOMPOSITION_FILE)))
    swapped = swap_in_decomposition(onnx.load(str(path)), dec)
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="weakclip-decomposed-"))
    folder.mkdir(parents=True, exist_ok=True)
    return core.save_model(swapped, folder / path.name)


# ----------------------------------------------------------------------------------------------------------------
# the --custom-op step of the export


def export_custom_op(
    model: WeakCLIP,
    T: torch.Tensor,
    out: Path,
    opts: ExportOptions,
    *,
    specs: dict[str, GraphSpec],
    protos: dict[str, Any],
    shapes: list[tuple[int, int, int]],
    failures: list[str],
    example: torch.Tensor,
    provenance: dict[str, str] | None = None,
) -> dict[str, Any]:
    import json

    spec_json = plugin_spec()
    attrs = plugin_attributes(model)
    report: dict[str, Any] = {
        "op_type": spec_json["op_type"],
        "plugin_version": spec_json["plugin_version"],
        "plugin_namespace": spec_json["plugin_namespace"],
        "domain": CUSTOM_DOMAIN,
        "attributes": attrs,
        "graphs": {},
    }
    meta = dict(opset=opts.opset, exporter=opts.exporter)
    extra_meta = {
        **(provenance or {}),
        "custom_op": spec_json["op_type"],
        "custom_op_domain": CUSTOM_DOMAIN,
        "plugin_attributes": json.dumps(attrs),
    }

    # 1. the decomposition (standard ONNX), exported from CoAttentionPackedReference
    dspec = decomposition_spec(model, T, specs["encoder"])
    dpath = out / DECOMPOSITION_FILE
    core.log(f"custom op: exporting the standard decomposition → {dpath}")
    t0 = time.perf_counter()
    dproto = core.export_graph(
        dspec,
        dspec.make_inputs(example),
        exporter=opts.exporter,
        opset=opts.opset,
        crop=model.config.crop_size,
        patch=model.config.patch_size,
    )
    core.set_metadata(dproto, {**core.model_metadata(model, kind=dspec.kind, **meta), **extra_meta})
    core.save_model(dproto, dpath)
    t_export = time.perf_counter() - t0
    report["graphs"][dspec.kind] = {"file": dpath.name, "export_s": round(t_export, 2)}
    core.log(f"custom op: decomposition exported in {t_export:.1f} s, onnx.checker full check ok")
    if opts.check:
        ref = specs["coattention"]

        def decomp_reference(g: torch.Tensor, dense: torch.Tensor, text: torch.Tensor, w: torch.Tensor) -> Any:
            return ref.module(g, dense)  # the trained module (SDPA path), not the reference it was built from

        try:
            report["graphs"][dspec.kind]["check"] = core.check_graph(
                dpath,
                dspec,
                decomp_reference,
                shapes,
                atol=opts.atol,
                rtol=opts.rtol,
                min_agreement=opts.min_agreement,
            )
        except core.CheckFailed as e:
            failures.append(str(e))

    # 2. the plugin graphs
    custom = {"coattention_custom": custom_coattention_graph(model, T, opset=opts.opset)}
    if "encoder" in protos and "decoder" in protos:
        custom["end_to_end_custom"] = custom_end_to_end(
            protos["encoder"], custom["coattention_custom"], protos["decoder"]
        )
    else:
        core.log("custom op: weakclip_custom.onnx needs the encoder and decoder graphs; not written")
    for kind, proto in custom.items():
        path = out / FILES[kind]
        core.set_metadata(proto, {**core.model_metadata(model, kind=kind, **meta), **extra_meta})
        core.save_model(proto, path)
        n_plugin = sum(n.op_type == spec_json["op_type"] for n in proto.graph.node)
        report["graphs"][kind] = {"file": path.name, "mb": round(core.file_mb(path), 3), "plugin_nodes": n_plugin}
        core.log(f"custom op: {path.name} ({n_plugin} {spec_json['op_type']} node), onnx.checker full check ok")
        if opts.check:
            spec = specs[STANDARD_KIND[kind]]
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    report["graphs"][kind]["check"] = core.check_graph(
                        decomposed_copy(path, dpath, tmp),
                        spec,
                        spec.module,
                        shapes,
                        atol=opts.atol,
                        rtol=opts.rtol,
                        min_agreement=opts.min_agreement,
                    )
            except core.CheckFailed as e:
                failures.append(f"custom op (decomposed): {e}")
    return report
