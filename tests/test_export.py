"""Export vs PyTorch: the ONNX graphs of weakclip-export against the PyTorch model they came from.

One tiny model is exported once per session through the CLI (``weakclip.export.to_onnx.main``, with ``--custom-op --fp16``,
self-check on) and every test reads that folder.  The tiny preset is built with ``crop_size=512`` so the one exported
graph can be run at the deployment sizes (512², 320², 384×512): the crop is the upper bound of the dynamic H, W and
sets the stored positional grid (32×32); everything else about the tiny preset is unchanged.  (An export-time
``--max-size`` override was not added: the crop is a property of the checkpoint, and the graph resizes the
positional table for any H, W anyway.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import weakclip

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from conftest import tiny_model  # noqa: E402  (tests/ is on sys.path under pytest)

from weakclip.export import core, custom_op, fp16, pipeline, to_onnx  # noqa: E402

SEED = 0
TINY = dict(crop_size=512)  # see module docstring
STANDARD = ("encoder.onnx", "coattention.onnx", "decoder.onnx", "weakclip.onnx")
CUSTOM = ("coattention_custom.onnx", "weakclip_custom.onnx", "coattention_decomposition.onnx")
FP16 = tuple(fp16.fp16_name(f) for f in STANDARD + CUSTOM[:2])
METADATA_KEYS = ("graph", "class_names", "mean", "std", "crop_size", "config", "weakclip_version", "opset")


@pytest.fixture(scope="module")
def exported(tiny_export: tuple[Path, Path]) -> Path:
    return tiny_export[0]


@pytest.fixture(scope="module")
def model() -> weakclip.WeakCLIP:
    return tiny_model()


@pytest.fixture(scope="module")
def session(exported: Path):
    return core.ort_session(exported / "weakclip.onnx")


def run(sess, **inputs: torch.Tensor) -> list[np.ndarray]:
    return sess.run(None, {k: v.numpy() for k, v in inputs.items()})


def parity(got: np.ndarray, ref: torch.Tensor) -> tuple[float, float]:
    """(max |Δ|, argmax agreement over the class axis)."""
    r = ref.numpy()
    return float(np.abs(got - r).max()), float((got.argmax(1) == r.argmax(1)).mean())


# ----------------------------------------------------------------------------------------------------------------
# files, metadata, dynamic axes


def test_export_writes_every_graph_with_metadata(exported: Path, model: weakclip.WeakCLIP) -> None:
    for name in STANDARD + CUSTOM + FP16:
        path = exported / name
        assert path.is_file(), name
        assert not path.with_name(name + ".data").exists(), f"{name}: expected a single-file model (< 2 GB)"
        m = onnx.load(str(path))
        onnx.checker.check_model(m, full_check=True)
        meta = {p.key: p.value for p in m.metadata_props}
        for key in METADATA_KEYS:
            assert key in meta, f"{name}: metadata {key} missing"
        assert json.loads(meta["class_names"]) == list(model.config.class_names)
        assert json.loads(meta["mean"]) == list(model.config.mean)
        assert json.loads(meta["std"]) == list(model.config.std)
        assert int(meta["crop_size"]) == 512
        assert json.loads(meta["config"]) == model.config.to_dict()
        assert meta["weakclip_version"] == weakclip.__version__
        assert meta["opset"] == str(core.OPSET)
        assert {o.domain: o.version for o in m.opset_import}[""] == core.OPSET
        assert meta["precision"] == ("fp16" if name in FP16 else "fp32")
    kinds = {f: core.read_metadata(exported / f)["graph"] for f in STANDARD}
    assert kinds == dict(zip(STANDARD, ("encoder", "coattention", "decoder", "end_to_end"), strict=True))
    report = json.loads((exported / "export.json").read_text())
    assert report["ok"] and report["exporter"] == "dynamo" and report["opset"] == core.OPSET


def test_end_to_end_is_the_three_parts_composed(exported: Path) -> None:
    """With the parts exported too, weakclip.onnx is composed from them (not traced again): the report says so, names
    the parts share got a part prefix (one node per name), and it computes what the three part graphs chained do."""
    graphs = json.loads((exported / "export.json").read_text())["graphs"]
    assert graphs["end_to_end"]["composed_from"] == ["encoder.onnx", "coattention.onnx", "decoder.onnx"]
    assert all("composed_from" not in graphs[k] for k in ("encoder", "coattention", "decoder"))
    m = onnx.load(str(exported / "weakclip.onnx"))
    names = [n.name for n in m.graph.node]
    assert len(names) == len(set(names)) and any(n.startswith("decoder/") for n in names)
    assert "image_encoder.visual.proj" in {t.name for t in m.graph.initializer}  # unique names kept (int8 finds it)
    image = torch.randn(1, 3, 320, 384, generator=torch.Generator().manual_seed(3))
    enc, co, dec = (core.ort_session(exported / f) for f in STANDARD[:3])
    *taps, g, dense = run(enc, image=image)
    (score,) = co.run(None, {"g": g, "dense": dense})
    (logits,) = dec.run(None, {**dict(zip(("tap0", "tap1", "tap2", "tap3"), taps, strict=True)), "score_map": score})
    whole = core.ort_session(exported / "weakclip.onnx").run(None, {"image": image.numpy()})
    # the same fp32 ops in the same order; ORT may fuse across the former part boundaries: fp32 rounding only
    for got, want in zip(whole, (logits, score), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_no_text_tower_in_graphs(exported: Path, model: weakclip.WeakCLIP) -> None:
    """T is a (K, E) constant: no graph holds the token embedding table or takes text input."""
    vocab = model.config.vocab_size
    for name in STANDARD:
        m = onnx.load(str(exported / name))
        assert all(vocab not in tuple(t.dims) for t in m.graph.initializer), name
        assert "text" not in {i.name for i in m.graph.input}


def test_batch_and_size_are_dynamic(exported: Path) -> None:
    m = onnx.load(str(exported / "weakclip.onnx"))
    (image,) = m.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["B", 3, "H", "W"]
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert outs == {"logits": ["B", 21, "H/4", "W/4"], "score_map": ["B", 21, "H/16", "W/16"]}


# ----------------------------------------------------------------------------------------------------------------
# ONNX Runtime vs PyTorch


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(512, 512), (320, 320), (384, 512)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_end_to_end_matches_pytorch(session, model: weakclip.WeakCLIP, batch: int, size: tuple[int, int]) -> None:
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch * 1000 + size[1]))
    with torch.no_grad():
        ref = model(x)
    logits, score = run(session, image=x)
    d, agree = parity(logits, ref.logits)
    ds, agree_s = parity(score, ref.score_map)
    print(
        f"B={batch} {size[0]}×{size[1]}: logits max |Δ| {d:.2e} agreement {100 * agree:.3f} %, score max |Δ| {ds:.2e}"
    )
    assert logits.shape == tuple(ref.logits.shape) == (batch, 21, size[0] // 4, size[1] // 4)
    assert d <= 1e-3 and agree >= 0.999
    assert ds <= 1e-3 and agree_s >= 0.999


def test_chained_parts_equal_end_to_end(exported: Path, session) -> None:
    enc, co, dec = (core.ort_session(exported / f) for f in STANDARD[:3])
    x = torch.randn(2, 3, 384, 320, generator=torch.Generator().manual_seed(7))
    taps_g_dense = dict(zip((o.name for o in enc.get_outputs()), run(enc, image=x), strict=True))
    (score,) = co.run(None, {"g": taps_g_dense["g"], "dense": taps_g_dense["dense"]})
    (logits,) = dec.run(None, {**{t: taps_g_dense[t] for t in ("tap0", "tap1", "tap2", "tap3")}, "score_map": score})
    logits_e2e, score_e2e = run(session, image=x)
    assert np.abs(score - score_e2e).max() <= 1e-5
    assert np.abs(logits - logits_e2e).max() <= 1e-5


def test_torchscript_exporter_is_rejected_by_the_self_check(model: weakclip.WeakCLIP, tmp_path: Path) -> None:
    """Why dynamo is the default: the TorchScript graph only runs at its example size (see core.EXPORTERS)."""
    opts = core.ExportOptions(exporter="torchscript", graphs=("end_to_end",))
    with pytest.raises(core.CheckFailed):
        pipeline.export_model(model, tmp_path, opts)
    assert json.loads((tmp_path / "export.json").read_text())["ok"] is False


def test_simplified_graph_keeps_parity_and_dynamic_axes(exported: Path, model: weakclip.WeakCLIP, tmp_path) -> None:
    pytest.importorskip("onnxslim")
    slim = core.simplify(onnx.load(str(exported / "weakclip.onnx")))
    path = core.save_model(slim, tmp_path / "weakclip.onnx")
    assert core.read_metadata(path)["graph"] == "end_to_end"
    sess = core.ort_session(path)
    for shape in ((2, 3, 256, 384), (1, 3, 512, 512)):
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).logits
        d, agree = parity(run(sess, image=x)[0], ref)
        assert d <= 1e-3 and agree >= 0.999


# ----------------------------------------------------------------------------------------------------------------
# custom-op variant


def _plugin_nodes(m) -> list:
    op = custom_op.plugin_spec()["op_type"]
    return [n for n in m.graph.node if n.op_type == op]


def test_custom_node_identity_matches_plugin_names_json(exported: Path, model: weakclip.WeakCLIP) -> None:
    spec = json.loads((REPO / "engines/csrc/plugin_names.json").read_text())
    cfg = model.config
    for name in ("coattention_custom.onnx", "weakclip_custom.onnx"):
        m = onnx.load(str(exported / name))
        (node,) = _plugin_nodes(m)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert node.op_type == spec["op_type"]
        assert node.domain == custom_op.CUSTOM_DOMAIN
        assert attrs.pop("plugin_version").decode() == spec["plugin_version"]
        assert attrs.pop("plugin_namespace").decode() == spec["plugin_namespace"]
        assert list(attrs) == spec["attributes"]  # node attributes = creator PluginFields, same order
        for a, (kind, _) in spec["attribute_info"].items():
            assert isinstance(attrs[a], int if kind == "int" else float), a
        assert attrs["coattn_width"] == cfg.coattn_width and attrs["coattn_heads"] == cfg.coattn_heads
        assert attrs["coattn_layers"] == cfg.coattn_layers and attrs["coattn_mlp_ratio"] == cfg.coattn_mlp_ratio
        assert attrs["layer_norm_eps"] == pytest.approx(1e-5)
        assert [x.split("/")[-1] for x in node.input] == [i[0] for i in spec["inputs"]]
        inits = {t.name.split("/")[-1]: tuple(t.dims) for t in m.graph.initializer}
        assert inits["text"] == (cfg.num_classes, cfg.embed_dim)
        n_weights = sum(int(np.prod(s)) for _, s in custom_op.packed_layout(model))
        assert inits["weights"] == (n_weights,)
        assert n_weights == sum(p.numel() for p in model.coattention.state_dict().values())


def _generated_plugin_header(tmp: Path) -> str:
    """Run the JSON → weakclip_plugin_names.h step of CMakeLists.txt (cmake script mode; no CUDA needed)."""
    src = (REPO / "CMakeLists.txt").read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(src) if line.startswith("set(WEAKCLIP_CSRC"))
        cfg = next(i for i, line in enumerate(src) if line.startswith("file(CONFIGURE"))
        end = next(i for i in range(cfg, len(src)) if src[i].strip() == '")')
    except StopIteration:
        pytest.fail("CMakeLists.txt no longer has the plugin_names.json → header block this test runs")
    block = [line for line in src[start : end + 1] if not line.startswith("set_property(")]  # not scriptable
    script = tmp / "gen.cmake"
    script.write_text(
        f'cmake_minimum_required(VERSION 3.19)\nset(CMAKE_CURRENT_SOURCE_DIR "{REPO}")\n'
        f'set(CMAKE_CURRENT_BINARY_DIR "{tmp}")\n' + "\n".join(block) + "\n"
    )
    r = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return (tmp / "generated" / "weakclip_plugin_names.h").read_text()


def test_custom_node_identity_matches_the_cpp_plugin(exported: Path, tmp_path: Path) -> None:
    """The node equals the constants the C++ creator is compiled with: the generated header's macros (made by the
    CMake step from the JSON) and the plugin source's use of them."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed: cannot generate weakclip_plugin_names.h")
    header = _generated_plugin_header(tmp_path)
    macros = dict(re.findall(r"^#define (WEAKCLIP_\w+) (.*)$", header, flags=re.M))
    (node,) = _plugin_nodes(onnx.load(str(exported / "weakclip_custom.onnx")))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert json.loads(macros["WEAKCLIP_PLUGIN_OP_TYPE"]) == node.op_type
    assert json.loads(macros["WEAKCLIP_PLUGIN_VERSION"]) == attrs["plugin_version"].decode()
    assert json.loads(macros["WEAKCLIP_PLUGIN_NAMESPACE"]) == attrs["plugin_namespace"].decode()
    cpp_attrs = re.findall(r'"([^"]+)"', macros["WEAKCLIP_PLUGIN_ATTRIBUTE_NAMES_INIT"])
    assert cpp_attrs == [a for a in attrs if a not in ("plugin_version", "plugin_namespace")]
    cpp_weights = re.findall(r'\{"([^"]+)", "([^"]+)"\}', header)
    assert [list(w) for w in cpp_weights] == custom_op.plugin_spec()["packed_weights"]

    plugin_cpp = REPO / "engines/csrc/coattn_plugin.cpp"
    if not plugin_cpp.exists():
        pytest.skip("engines/csrc/coattn_plugin.cpp not present")
    code = plugin_cpp.read_text()
    assert '#include "weakclip_plugin_names.h"' in code or '#include "coattn_plugin.h"' in code
    for what, macro in (("Name", "OP_TYPE"), ("Version", "VERSION"), ("Namespace", "NAMESPACE")):
        getters = re.findall(rf"getPlugin{what}\(\) const noexcept \{{\s*return ([^;]+);", code)
        assert getters and set(getters) == {f"WEAKCLIP_PLUGIN_{macro}"}, (what, getters)
    assert "{WEAKCLIP_PLUGIN_ATTRIBUTE_NAMES_INIT}" in code  # creator PluginFields come from the generated list
    literal_fields = re.findall(r'constexpr char const\* k\w+ = "([^"]+)";', code)
    assert set(literal_fields) <= set(cpp_attrs), literal_fields  # any literal names it uses are JSON names


def test_custom_graph_swapped_back_equals_standard_graph(exported: Path, session, tmp_path: Path) -> None:
    decomposed = custom_op.decomposed_copy(exported / "weakclip_custom.onnx", out_dir=tmp_path)
    m = onnx.load(str(decomposed))
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["logits", "score_map"]
    assert not _plugin_nodes(m)
    assert custom_op.CUSTOM_DOMAIN not in {o.domain for o in m.opset_import}
    sess = core.ort_session(decomposed)
    for shape in ((2, 3, 320, 448), (1, 3, 512, 512)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[2]))
        logits, score = run(sess, image=x)
        logits_std, score_std = run(session, image=x)
        assert np.abs(score - score_std).max() <= 1e-5
        assert np.abs(logits - logits_std).max() <= 1e-5
        assert (logits.argmax(1) == logits_std.argmax(1)).mean() >= 0.999


def test_swap_refuses_mismatched_attributes(exported: Path) -> None:
    m = onnx.load(str(exported / "coattention_custom.onnx"))
    (node,) = _plugin_nodes(m)
    for a in node.attribute:
        if a.name == "coattn_heads":
            a.i += 1
    with pytest.raises(ValueError, match="coattn_heads"):
        custom_op.swap_in_decomposition(m, onnx.load(str(exported / custom_op.DECOMPOSITION_FILE)))


# ----------------------------------------------------------------------------------------------------------------
# fp16


def test_fp16_graph_runs_on_ort_cpu(exported: Path, session) -> None:
    m = onnx.load(str(exported / "weakclip_fp16.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    types = {t.data_type for t in m.graph.initializer if len(t.dims) >= 2}
    assert onnx.TensorProto.FLOAT16 in types
    # normalisation / softmax stay fp32: their inputs are Casts to float (or fp32 tensors)
    ops = {n.op_type for n in m.graph.node}
    assert "Cast" in ops and "LayerNormalization" in ops
    sess = core.ort_session(exported / "weakclip_fp16.onnx", disabled_optimizers=fp16.ORT_CPU_FP16_DISABLED_OPTIMIZERS)
    x = torch.randn(2, 3, 384, 512, generator=torch.Generator().manual_seed(3))
    logits16 = run(sess, image=x)[0]
    logits32 = run(session, image=x)[0]
    d = float(np.abs(logits16 - logits32).max())
    agree = float((logits16.argmax(1) == logits32.argmax(1)).mean())
    print(f"fp16 vs fp32 (ORT CPU): max |Δlogit| {d:.2e}, argmax agreement {100 * agree:.3f} %")
    assert np.isfinite(logits16).all() and agree >= 0.99


def test_fp16_keeps_fp32_constants_of_blocked_ops(exported: Path) -> None:
    """F.normalize's eps (1e-12) reaches the blocked Clip in fp32, not rounded to fp16's 1e-7."""
    m = onnx.load(str(exported / "coattention_fp16.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    mins = [n.input[1] for n in m.graph.node if n.op_type == "Clip" and len(n.input) > 1 and n.input[1]]
    assert mins
    for name in mins:
        assert name in inits and inits[name].data_type == onnx.TensorProto.FLOAT
        assert float(onnx.numpy_helper.to_array(inits[name])) == pytest.approx(1e-12)


# ----------------------------------------------------------------------------------------------------------------
# command line errors


@pytest.mark.parametrize(
    "content", [None, b"", b"not a safetensors file at all \x00\x01"], ids=["missing", "empty", "garbage"]
)
def test_bad_checkpoint_is_a_one_line_error(tmp_path: Path, capsys, content: bytes | None) -> None:
    ckpt = tmp_path / "model.safetensors"
    if content is not None:
        ckpt.write_bytes(content)
    rc = to_onnx.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {ckpt}: ")
    assert not (tmp_path / "out").exists()


def _torch_file(path: Path, obj) -> None:
    torch.save(obj, path)


@pytest.mark.parametrize(
    "name, make, expected",
    [
        (
            "weakclip.onnx",
            lambda p: shutil.copy(_tiny_onnx(p.parent), p),
            "this is an ONNX model, but export --checkpoint expects a WeakCLIP checkpoint (.safetensors); generate "
            "--engine onnxruntime (or auto) or --engine tensorrt takes it",
        ),
        (
            "last.pt",
            lambda p: _torch_file(p, {"model": {}, "optimizer": {}, "iteration": 3}),
            "this is a PyTorch checkpoint (torch.save: a training last.pt or an official mmseg .pth), but export "
            "--checkpoint expects a WeakCLIP checkpoint (.safetensors)",
        ),
        (
            "weakclip_voc.pth",
            lambda p: _torch_file(p, {"state_dict": {"decode_head.conv_seg.weight": torch.zeros(1)}}),
            "this is a PyTorch checkpoint (torch.save: a training last.pt or an official mmseg .pth), but export "
            "--checkpoint expects a WeakCLIP checkpoint (.safetensors)",
        ),
        ("nope.safetensors", None, "missing; export --checkpoint expects a WeakCLIP checkpoint (.safetensors)"),
    ],
    ids=["onnx", "last.pt", "official.pth", "missing"],
)
def test_wrong_checkpoint_kind_is_refused_before_loading(tmp_path: Path, capsys, name, make, expected) -> None:
    ckpt = tmp_path / name
    if make is not None:
        make(ckpt)
    rc = to_onnx.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"error: {ckpt}: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not (tmp_path / "out").exists()


def _tiny_onnx(folder: Path) -> Path:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = folder / "identity.onnx"
    onnx.save_model(helper.make_model(g, producer_name="test"), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("int8_ckpt") / "tiny.safetensors"
    torch.manual_seed(SEED)
    weakclip.save_checkpoint(weakclip.build_model("tiny").eval(), path)
    return path


@pytest.mark.parametrize("case", ["missing", "empty", "no-images", "bad-list"])
def test_int8_images_are_checked_before_the_fp32_export(tmp_path: Path, capsys, tiny_ckpt: Path, case: str) -> None:
    src = tmp_path / "calib"
    if case == "empty":
        src.mkdir()
    elif case == "no-images":
        src.mkdir()
        (src / "notes.txt").write_text("x")
    elif case == "bad-list":
        src = tmp_path / "list.txt"
        src.write_text("a.jpg\nb.jpg\n")
    expected = {
        "missing": f"error: {src}: calibration images not found; --int8 takes a folder of calibration images",
        "empty": f"error: {src}: the calibration folder is empty; --int8 takes a folder",
        "no-images": f"error: {src}: the calibration folder holds no images; --int8 takes a folder",
        "bad-list": f"error: {src}: 2 of 2 listed calibration images do not exist (first: {tmp_path / 'a.jpg'})",
    }[case]
    out = tmp_path / "onnx"
    rc = to_onnx.main(["--checkpoint", str(tiny_ckpt), "--out", str(out), "--int8", str(src)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert not out.exists()  # nothing was exported
    # the library path refuses too, before writing anything
    opts = core.ExportOptions(int8_calibration=str(src))
    with pytest.raises(core.ExportInputError):
        pipeline.export_model(weakclip.load_checkpoint(tiny_ckpt), out, opts)
    assert not out.exists()


def test_int8_needs_the_end_to_end_graph(tmp_path: Path, capsys, tiny_ckpt: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    rc = to_onnx.main(
        ["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "o"), "--graphs", "encoder", "--int8", str(tmp_path)]
    )
    assert rc == 2
    assert capsys.readouterr().err == (
        "error: --int8 quantises the end_to_end graph (weakclip.onnx); include end_to_end in --graphs "
        "(see weakclip export --help)\n"
    )


def test_script_entry_point_help() -> None:
    r = subprocess.run([sys.executable, str(REPO / "export/to_onnx.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--custom-op" in r.stdout and "--fp16" in r.stdout


# ----------------------------------------------------------------------------------------------------------------
# full size


@pytest.mark.slow
def test_vit_b16_end_to_end_parity_512() -> None:
    """ViT-B/16 WeakCLIP (random weights, the real architecture) exported and compared at 512²."""
    torch.manual_seed(SEED)
    model = weakclip.build_model("vit_b16_voc").eval()
    with tempfile.TemporaryDirectory() as tmp:
        report = pipeline.export_model(model, tmp, core.ExportOptions(graphs=("end_to_end",), check=False))
        assert report["ok"]
        sess = core.ort_session(Path(tmp) / "weakclip.onnx")
        x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = model(x)
        logits, score = run(sess, image=x)
    d, agree = parity(logits, ref.logits)
    ds, _ = parity(score, ref.score_map)
    print(f"ViT-B/16 512² B=2: logits max |Δ| {d:.2e} (max |ref| {ref.logits.abs().max():.3g}), agreement {agree:.5f}")
    assert d <= 1e-3 + 1e-4 * float(ref.logits.abs().max()) and agree >= 0.999
    assert ds <= 1e-3


def test_int8_variant_calibrated_on_images(tmp_path: Path, tiny_onnx) -> None:
    """--int8 writes weakclip_int8.onnx (static int8 convs calibrated on real windows + dynamic int8 ViT linears)
    with the model metadata; the ORT engine runs it; its agreement with fp32 is measured and reported (int8 error has
    no arithmetic bound to assert, so only validity is asserted here).  The export is the session's ``tiny_onnx``
    (``--graphs end_to_end --int8 <6 synthetic images> --int8-count 4``); the refusals use a set of their own."""
    from weakclip.data.synthetic import make_synthetic_dataset
    from weakclip.engines.base import get_engine

    out, ckpt = tiny_onnx
    report = json.loads((out / "export.json").read_text())["int8"]
    assert report["convs"]["calibration_windows"] == 4 and report["vit_linears"]["quantized_nodes"] > 0
    assert 0.0 <= report["argmax_agreement_vs_fp32"] <= 1.0 and np.isfinite(report["max_abs_dlogit_vs_fp32"])
    meta = core.read_metadata(out / "weakclip_int8.onnx")
    assert meta["precision"] == "int8" and json.loads(meta["class_names"])[0] == "background"
    with get_engine("onnxruntime", out / "weakclip_int8.onnx") as eng:
        logits = eng(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, eng.num_classes, 16, 24) and torch.isfinite(logits).all()
    data = tmp_path / "syn"
    make_synthetic_dataset(data, images=6, seed=2, val_images=1)
    assert to_onnx.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "o1"), "--int8"]) == 2  # no IMAGES
    (data / "JPEGImages" / "train_000000.jpg").write_bytes(b"broken")  # decoded before the fp32 export
    assert (
        to_onnx.main(
            [
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "o3"),
                "--graphs",
                "end_to_end",
                "--int8",
                str(data / "JPEGImages"),
                "--int8-count",
                "100",
            ]
        )
        == 2
    )
    assert not (tmp_path / "o3").exists()
    assert (
        to_onnx.main(
            [
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "o2"),
                "--graphs",
                "end_to_end",
                "--skip-check",
                "--int8",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
