"""Official hustvl/WeakCLIP checkpoint → ours: synthetic official-layout state dicts (VOC 21 and COCO 91 classes, tiny
widths) built here, independently of the converter's mapping table; wrong input files are one-line usage errors."""

import json
import pickle

import pytest
import torch

import weakclip
from weakclip.cli.convert import main
from weakclip.data.classes import COCO_OFFICIAL91_CLASSES, VOC_CLASSES
from weakclip.errors import UsageError
from weakclip.model.checkpoint import read_checkpoint_metadata
from weakclip.model.coattention import _layer_ref, _lin, _ln
from weakclip.model.convert_official import convert

OFFICIAL_LAYERS = 3  # ContextDecoder(transformer_layers=3) in the official config

# hustvl/WeakCLIP weakclip/coco.py COCODataset.CLASSES, written out here as the independent reference.
OFFICIAL_COCO_CLASSES = (
    "background",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "street sign",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "hat",
    "backpack",
    "umbrella",
    "shoe",
    "eye glasses",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "plate",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "mirror",
    "dining table",
    "window",
    "desk",
    "toilet",
    "door",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "blender",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def official_key(k: str) -> str:
    """Our state-dict name → the official mmseg name (the reverse of the converter, written independently)."""
    if k.startswith("image_encoder.visual."):
        return "backbone." + k[len("image_encoder.visual.") :]
    if k.startswith("adapter."):
        return "backbone." + k[len("adapter.") :]
    if k.startswith("text_encoder.tower."):
        return "text_encoder." + k[len("text_encoder.tower.") :]
    if k == "prompt.contexts":
        return "contexts"
    if k in ("coattention.gamma", "coattention.beta"):
        return k.split(".")[1]
    if k.startswith("coattention."):
        rest = k[len("coattention.") :]
        for ours, theirs in (
            ("text_decoder.", "decoder."),
            ("visual_decoder.", "anti_decoder."),
            ("text_out.", "out_proj."),
            ("visual_out.", "anti_out_proj."),
        ):
            if rest.startswith(ours):
                rest = theirs + rest[len(ours) :]
        return "context_decoder." + rest
    if k.startswith(("decoder.lateral_convs.", "decoder.fpn_convs.")):
        _, kind, i, p = k.split(".")
        return f"neck.{kind}.{i}.conv.{p}"
    if k.startswith("decoder."):
        return "decode_head." + k[len("decoder.") :]
    raise AssertionError(k)


def official_state_dict(seed: int = 0, class_names=VOC_CLASSES) -> dict[str, torch.Tensor]:
    """Names and shapes of the official mmseg checkpoint (tiny widths): backbone.* incl. fpn1..4, text_encoder.*,
    context_decoder.{memory_proj,text_proj,decoder.i,out_proj,anti_decoder.i,anti_out_proj}, neck.*, decode_head.*,
    contexts, gamma, beta."""
    torch.manual_seed(seed)
    m = weakclip.build_model("tiny", coattn_layers=OFFICIAL_LAYERS, class_names=tuple(class_names))
    sd = {}
    for k, v in m.state_dict().items():
        v = torch.randn_like(v) * 0.1 if v.is_floating_point() else v
        if k.endswith("running_var"):
            v = v.abs() + 0.5
        sd[official_key(k)] = v
    assert "backbone.fpn1.2.running_mean" in sd and "context_decoder.anti_decoder.2.mlp.3.weight" in sd
    assert "neck.lateral_convs.3.conv.weight" in sd and "decode_head.scale_heads.3.4.conv.weight" in sd
    return sd


def official_score_map(sd, g, dense, T, heads):
    """Direct evaluation of the official ContextDecoder: every layer gets the ORIGINAL queries; the last wins."""
    B, E, h, w = dense.shape
    V = torch.cat([g[:, None], dense.flatten(2).transpose(1, 2)], 1)
    Tb = T[None].expand(B, -1, -1)
    p = "context_decoder."
    sub = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    mem = _ln(_lin(_ln(V, sub, "memory_proj.0"), sub, "memory_proj.1"), sub, "memory_proj.2")
    txt = _lin(_ln(Tb, sub, "text_proj.0"), sub, "text_proj.1")
    for i in range(OFFICIAL_LAYERS):
        text_diff = _layer_ref(txt, mem, sub, f"decoder.{i}", heads)
    for i in range(OFFICIAL_LAYERS):
        visual_diff = _layer_ref(mem, txt, sub, f"anti_decoder.{i}", heads)
    T_star = Tb + sd["gamma"] * _lin(_ln(text_diff, sub, "out_proj.0"), sub, "out_proj.1")
    V_star = V + sd["beta"] * _lin(_ln(visual_diff, sub, "anti_out_proj.0"), sub, "anti_out_proj.1")
    f = torch.nn.functional.normalize(V_star[:, 1:], dim=-1)
    t = torch.nn.functional.normalize(T_star, dim=-1)
    return torch.einsum("bne,bke->bkn", f, t).reshape(B, -1, h, w)


def _check_converted(model, sd, num_classes):
    """Strictly loaded (convert does it), every tensor equal to its official source (co-attention layer 0 = the
    official layer 2), and the co-attention equal to a direct evaluation of the official ContextDecoder."""
    assert model.config.coattn_layers == 1 and model.config.double_cls_embedding
    assert model.config.num_classes == num_classes
    for k, v in model.state_dict().items():
        if k.startswith("prompt.name_tokens"):
            continue
        src = official_key(k).replace("decoder.0.", f"decoder.{OFFICIAL_LAYERS - 1}.")
        assert torch.equal(v, sd[src]), (k, src)
    E = model.config.embed_dim
    g, dense, T = torch.randn(2, E), torch.randn(2, E, 4, 6), torch.randn(num_classes, E)
    with torch.no_grad():
        S, _, _ = model.eval().coattention(g, dense, T)
        ref = official_score_map(sd, g, dense, T, heads=model.config.coattn_heads)
    assert S.shape == (2, num_classes, 4, 6)
    assert (S - ref).abs().max() < 1e-6


@pytest.mark.parametrize(
    "class_names, expected_list",
    [(VOC_CLASSES, "voc21"), (COCO_OFFICIAL91_CLASSES, "coco_official91")],
    ids=["voc21", "coco91"],
)
def test_official_voc_and_coco_convert_with_no_options(tmp_path, class_names, expected_list):
    K = len(class_names)
    sd = official_state_dict(class_names=class_names)
    if K == 91:  # the official COCO head: neck in_channels = D + 91
        assert sd["neck.lateral_convs.0.conv.weight"].shape[1] == 64 + 91
    torch.save(
        {"meta": {"iter": 20000, "mmseg_version": "0.19.0"}, "state_dict": sd, "optimizer": {}},
        tmp_path / "official.pth",
    )
    model = convert(tmp_path / "official.pth")  # preset recognised from the shapes, classes from the head size
    assert model.class_names == tuple(class_names)
    _check_converted(model, sd, K)
    # the CLI with no options writes a checkpoint that rebuilds the same model and records the class list
    out = tmp_path / "ours.safetensors"
    assert main([str(tmp_path / "official.pth"), str(out)]) == 0
    meta = read_checkpoint_metadata(out)
    assert meta["class_list"] == expected_list and meta["preset"] == "tiny"
    assert json.loads(meta["class_names"]) == list(class_names)
    m2 = weakclip.load_checkpoint(out).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m2(x).logits, model.eval()(x).logits, rtol=0, atol=0)


def test_coco91_class_list_is_the_official_order():
    assert COCO_OFFICIAL91_CLASSES == OFFICIAL_COCO_CLASSES
    assert COCO_OFFICIAL91_CLASSES[12] == "street sign" and COCO_OFFICIAL91_CLASSES[90] == "toothbrush"


def test_checkpoint_meta_classes_and_class_names_file(tmp_path):
    names = ("background", *(f"thing{i}" for i in range(1, 21)))
    sd = official_state_dict()
    torch.save({"meta": {"CLASSES": names}, "state_dict": sd}, tmp_path / "official.pth")
    assert convert(tmp_path / "official.pth").class_names == names
    (tmp_path / "names.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    out = tmp_path / "o.safetensors"
    assert main([str(tmp_path / "official.pth"), str(out), "--class-names", str(tmp_path / "names.txt")]) == 0
    assert read_checkpoint_metadata(out)["class_list"] == "--class-names"
    assert weakclip.load_checkpoint(out).class_names == VOC_CLASSES


def test_unknown_head_size_asks_for_class_names(tmp_path, capsys):
    sd = official_state_dict(class_names=VOC_CLASSES[:6])
    torch.save({"state_dict": sd}, tmp_path / "official.pth")
    assert main([str(tmp_path / "official.pth"), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the head has 6 classes" in err and "pass --class-names FILE" in err


def test_double_cls_embedding_changes_only_cls_path():
    torch.manual_seed(0)
    a = weakclip.build_model("tiny").eval()
    b = weakclip.build_model("tiny", double_cls_embedding=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ga = a.image_encoder(x)[1]
        gb = b.image_encoder(x)[1]
    assert (ga - gb).abs().max() > 1e-4


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_checkpoint_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil()}}, f)
    with pytest.raises(UsageError, match="refused"):
        convert(tmp_path / "evil.pth")
    assert main([str(tmp_path / "evil.pth"), str(tmp_path / "o.safetensors")]) == 2
    out = capsys.readouterr()
    assert "pwned" not in out.out and out.err.startswith("error: ") and out.err.count("\n") == 1


def test_missing_official_key_is_listed(tmp_path):
    sd = official_state_dict()
    del sd["context_decoder.anti_decoder.2.norm1.weight"]
    torch.save({"state_dict": sd}, tmp_path / "official.pth")
    with pytest.raises(UsageError, match=r"coattention\.visual_decoder\.0\.norm1\.weight"):
        convert(tmp_path / "official.pth")


def _last_pt(path):
    """A real <work_dir>/last.pt, written by train.py's own writer."""
    from weakclip.training.train import save_training_state

    m = weakclip.build_model("tiny")
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])
    save_training_state(path, m, opt, None, 3, -1.0, {"model": {"preset": "tiny"}})


def _onnx_file(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save_model(helper.make_model(g, producer_name="test"), str(path))


@pytest.mark.parametrize(
    "name, make, expected",
    [
        (
            "final.safetensors",
            lambda p: weakclip.save_checkpoint(weakclip.build_model("tiny"), p),
            "this is a WeakCLIP checkpoint (.safetensors), not an official hustvl/WeakCLIP checkpoint (.pth: mmseg "
            "state_dict); it needs no conversion: export --checkpoint and generate --engine torch take it",
        ),
        (
            "weakclip.onnx",
            _onnx_file,
            "this is an ONNX model, not an official hustvl/WeakCLIP checkpoint (.pth: mmseg "
            "state_dict); generate --engine onnxruntime (or auto) or --engine tensorrt takes it",
        ),
        (
            "last.pt",
            _last_pt,
            "this is a training checkpoint from train.py (last.pt), not an official hustvl/WeakCLIP "
            "checkpoint (.pth: mmseg state_dict); resume with train --resume, or use final.safetensors from the same "
            "work_dir",
        ),
        (
            "other.pth",
            lambda p: torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, p),
            "this is a state dict of 1 tensors without the official WeakCLIP keys (decode_head.conv_seg.weight, "
            "context_decoder.decoder.N.*; it has e.g. fc.weight), not an official",
        ),
        ("missing.pth", None, "the input checkpoint is missing; expected an official hustvl/WeakCLIP checkpoint"),
    ],
    ids=["ours", "onnx", "last.pt", "other-torch", "missing"],
)
def test_wrong_input_file_is_one_line_saying_what_it_is(tmp_path, capsys, name, make, expected):
    path = tmp_path / name
    if make is not None:
        make(path)
    rc = main([str(path), str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not (tmp_path / "out.safetensors").exists()
