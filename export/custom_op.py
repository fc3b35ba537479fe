"""TensorRT custom-op variant: the co-attention matching as ONE plugin node (described by
``engines/csrc/plugin_names.json``, shared with the C++ plugin) ``score_map (B, K, h, w) = <op_type>(g (B, E),
dense (B, E, h, w), text (K, E), weights (P,))``, text and weights as initializers (attributes are copied per node
and skipped by the fp16 conversion).  ORT cannot run the node: the checks inline its standard decomposition."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from weakclip.export import core
from weakclip.export.core import ExportOptions, GraphSpec
from weakclip.export.wrappers import CoAttentionPackedReference
from weakclip.model import plugin_names
from weakclip.model.model import WeakCLIP

CUSTOM_DOMAIN = "trt.plugins"  # TensorRT ignores the domain; ONNX needs one that is not the default
CUSTOM_DOMAIN_VERSION = 1
FILES = {"coattention_custom": "coattention_custom.onnx", "end_to_end_custom": "weakclip_custom.onnx"}
DECOMPOSITION_FILE = "coattention_decomposition.onnx"
PLUGIN_INPUTS = ("g", "dense", "text", "weights")
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm default, used by every LayerNorm of CoAttentionMatching (checked below)

plugin_spec = plugin_names.plugin_spec


def plugin_attributes(model: WeakCLIP) -> dict[str, int | float]:
    """The creator's PluginFields (``attributes`` of plugin_names.json): the config fields of that name, plus eps."""
    spec = plugin_spec()
    eps = {m.eps for m in model.coattention.modules() if isinstance(m, torch.nn.LayerNorm)}
    if eps != {LAYER_NORM_EPS}:
        raise ValueError(f"co-attention LayerNorm eps {sorted(eps)}: the plugin takes one value ({LAYER_NORM_EPS})")
    out: dict[str, int | float] = {}
    for name in spec["attributes"]:
        value = getattr(model.config, name, {"layer_norm_eps": LAYER_NORM_EPS}.get(name))
        if value is None:
            raise ValueError(f"plugin_names.json attribute {name!r} has no source in the WeakCLIP config")
        out[name] = int(value) if spec["attribute_info"][name][0] == "int" else float(value)
    return out


def packed_layout(model: WeakCLIP) -> list[tuple[str, tuple[int, ...]]]:
    """(state-dict name, shape) of every tensor of the packed ``weights`` input, in blob order."""
    cfg = model.config
    width, layers = cfg.coattn_width, cfg.coattn_layers
    shapes = plugin_names.packed_weight_shapes(layers, cfg.embed_dim, width, width * cfg.coattn_mlp_ratio)
    return list(zip(plugin_names.packed_weight_names(layers), shapes, strict=True))


def custom_coattention_graph(model: WeakCLIP, T: torch.Tensor, *, opset: int) -> Any:
    """g (B, E), dense (B, E, h, w) → score_map (B, K, h, w) as one plugin node; text and weights initializers."""
    from onnx import TensorProto, helper, numpy_helper

    def value(name: str, shape: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    spec = plugin_spec()
    node = helper.make_node(
        spec["op_type"], list(PLUGIN_INPUTS), ["score_map"], name="weakclip_coattention", domain=CUSTOM_DOMAIN
    )
    attrs: dict[str, Any] = {k: str(spec[k]) for k in ("plugin_version", "plugin_namespace")}
    attrs.update(plugin_attributes(model))  # in the JSON's order (make_node would sort keyword attributes)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    E, K = model.config.embed_dim, model.config.num_classes
    graph = helper.make_graph(
        [node],
        "weakclip_coattention_custom",
        inputs=[value("g", ["B", E]), value("dense", ["B", E, "h", "w"])],
        outputs=[value("score_map", ["B", K, "h", "w"])],
        initializer=[
            numpy_helper.from_array(T.detach().float().contiguous().numpy(), "text"),
            numpy_helper.from_array(plugin_names.pack_coattention_weights(model.coattention).numpy(), "weights"),
        ],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CUSTOM_DOMAIN, CUSTOM_DOMAIN_VERSION)],
        producer_name="weakclip-export",
    )


def decomposition_spec(model: WeakCLIP, T: torch.Tensor, coattention_spec: GraphSpec) -> GraphSpec:
    """GraphSpec of the node's standard decomposition (g, dense, text, weights → score_map)."""
    cfg = model.config
    module = CoAttentionPackedReference(packed_layout(model), heads=cfg.coattn_heads, layers=cfg.coattn_layers)
    blob, text = plugin_names.pack_coattention_weights(model.coattention), T.detach().float()

    def make_inputs(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**coattention_spec.make_inputs(images), "text": text, "weights": blob}

    dims, score = coattention_spec.dims, coattention_spec.output_names
    return GraphSpec(
        "coattention_decomposition", DECOMPOSITION_FILE, module.eval(), PLUGIN_INPUTS, score, dims, make_inputs, score
    )


def swap_in_decomposition(model: Any, decomposition: Any) -> Any:
    """A copy of ``model`` with every plugin node replaced by the nodes of ``decomposition``, its inner tensors
    prefixed ``<node name>/``.  The node's attributes must match the decomposition's ``plugin_attributes`` metadata."""
    import onnx
    from onnx import TensorProto, helper

    op_type = plugin_spec()["op_type"]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g, dg = out.graph, decomposition.graph
    want = json.loads(core.props(decomposition).get("plugin_attributes", "{}"))
    d_inputs, d_outputs = [i.name for i in dg.input], [o.name for o in dg.output]
    if d_inputs != list(PLUGIN_INPUTS) or len(d_outputs) != 1:
        raise ValueError(f"decomposition must map {PLUGIN_INPUTS} → one output, has {d_inputs} → {d_outputs}")
    if not any(n.op_type == op_type and n.domain == CUSTOM_DOMAIN for n in g.node):
        raise ValueError(f"no {op_type} node (domain {CUSTOM_DOMAIN}) in the model")
    types = {t.name: t.data_type for t in g.initializer}
    new_nodes = []
    for node in g.node:
        if node.op_type != op_type or node.domain != CUSTOM_DOMAIN:
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for k, v in want.items():
            got = attrs.get(k)
            if got is None or abs(float(got) - float(v)) > 1e-12 * max(1.0, abs(float(v))):
                raise ValueError(f"plugin node {node.name}: attribute {k}={got}, decomposition was built for {v}")
        prefix = f"{node.name or 'plugin'}/"
        fp16 = types.get(node.input[3]) == TensorProto.FLOAT16
        io = [*zip(d_inputs, node.input, strict=True), (d_outputs[0], node.output[0])]
        bind = {d: f"{prefix}{d}_fp32" if fp16 else x for d, x in io}
        if fp16:  # fp32 decomposition between Casts
            new_nodes += [
                helper.make_node("Cast", [x], [bind[d]], name=f"{prefix}cast_{d}", to=TensorProto.FLOAT)
                for d, x in io[:-1]
            ]

        def name(x: str, bind: dict[str, str] = bind, prefix: str = prefix) -> str:
            return bind.get(x, f"{prefix}{x}" if x else x)

        for t in dg.initializer:
            c = g.initializer.add()
            c.CopyFrom(t)
            c.name = name(t.name)
        for dn in dg.node:
            n = onnx.NodeProto()
            n.CopyFrom(dn)
            n.name = prefix + dn.name
            n.input[:] = [name(x) for x in dn.input]
            n.output[:] = [name(x) for x in dn.output]
            new_nodes.append(n)
        if fp16:
            d, x = io[-1]
            new_nodes.append(helper.make_node("Cast", [bind[d]], [x], name=f"{prefix}cast_out", to=TensorProto.FLOAT16))
    del g.node[:]
    g.node.extend(new_nodes)
    for f in decomposition.functions:  # exporter-emitted local functions, if any
        if not any(x.name == f.name and x.domain == f.domain for x in out.functions):
            out.functions.append(f)
    opsets = [o for o in out.opset_import if o.domain != CUSTOM_DOMAIN]
    opsets += [o for o in decomposition.opset_import if o.domain not in {x.domain for x in out.opset_import}]
    del out.opset_import[:]
    out.opset_import.extend(opsets)
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


def export_custom_op(
    model: WeakCLIP,
    T: torch.Tensor,
    out: Path,
    opts: ExportOptions,
    *,
    specs: dict[str, GraphSpec],
    protos: dict[str, Any],
    failures: list[str],
    metadata: Callable[[str], dict[str, str]],
) -> dict[str, Any]:
    """Write the decomposition and the plugin graphs (checked through the decomposition); returns their report.
    ``metadata(kind)``: the metadata of a graph of that kind."""
    crop, patch = model.config.crop_size, model.config.patch_size
    shapes = core.check_shapes(crop, patch)
    spec_json, attrs = plugin_spec(), plugin_attributes(model)
    op_type = spec_json["op_type"]
    graphs: dict[str, Any] = {}
    report = {k: spec_json[k] for k in ("op_type", "plugin_version", "plugin_namespace")}
    report.update(domain=CUSTOM_DOMAIN, attributes=attrs, graphs=graphs)
    extra_meta = {"custom_op": op_type, "custom_op_domain": CUSTOM_DOMAIN, "plugin_attributes": json.dumps(attrs)}

    # 1. the decomposition (standard ONNX), exported from CoAttentionPackedReference
    dspec = decomposition_spec(model, T, specs["coattention"])
    dpath = out / DECOMPOSITION_FILE
    core.log(f"custom op: exporting the standard decomposition → {dpath}")
    t0 = time.perf_counter()
    dproto = core.export_graph(dspec, dspec.make_inputs(core.example_images(crop, patch)), opts, crop, patch)
    core.set_metadata(dproto, {**metadata(dspec.kind), **extra_meta})
    core.save_model(dproto, dpath)
    t_export = time.perf_counter() - t0
    graphs[dspec.kind] = {"file": dpath.name, "export_s": round(t_export, 2)}
    core.log(f"custom op: decomposition exported in {t_export:.1f} s, onnx.checker full check ok")
    if opts.check:  # against the trained module (SDPA path), not the reference the decomposition was built from
        reference = specs["coattention"].module
        core.check_into(
            graphs[dspec.kind], failures, "", dpath, dspec, lambda g, d, *_: reference(g, d), shapes, **opts.tolerance
        )

    # 2. the plugin graphs
    co = custom_coattention_graph(model, T, opset=opts.opset)
    custom = {"coattention_custom": co}
    if "encoder" in protos and "decoder" in protos:
        parts = (protos["encoder"], co, protos["decoder"])
        custom["end_to_end_custom"] = core.compose_end_to_end(*parts, name="weakclip_custom", patch=patch)
    else:
        core.log("custom op: weakclip_custom.onnx needs the encoder and decoder graphs; not written")
    for kind, proto in custom.items():
        path = out / FILES[kind]
        core.set_metadata(proto, {**metadata(kind), **extra_meta})
        core.save_model(proto, path)
        n_plugin = sum(n.op_type == op_type for n in proto.graph.node)
        graphs[kind] = {"file": path.name, "mb": round(core.file_mb(path), 3), "plugin_nodes": n_plugin}
        core.log(f"custom op: {path.name} ({n_plugin} {op_type} node), onnx.checker full check ok")
        if opts.check:
            spec = specs[kind.removesuffix("_custom")]
            with tempfile.TemporaryDirectory() as tmp:
                args = (decomposed_copy(path, dpath, tmp), spec, spec.module, shapes)
                core.check_into(graphs[kind], failures, "custom op (decomposed): ", *args, **opts.tolerance)
    return report
