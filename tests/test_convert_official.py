"""Official hustvl/WeakCLIP checkpoint → ours: a synthetic official-layout state dict built here."""

import pickle

import pytest
import torch

import weakclip
from weakclip.coattention import _layer_ref, _lin, _ln
from weakclip.convert_official import convert, main

OFFICIAL_LAYERS = 3  # ContextDecoder(transformer_layers=3) in the official config


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Names and shapes of the official mmseg checkpoint (tiny widths): backbone.* incl. fpn1..4, text_encoder.*,
    context_decoder.{memory_proj,text_proj,decoder.i,out_proj,anti_decoder.i,anti_out_proj}, neck.*, decode_head.*,
    contexts, gamma, beta — built independently of the converter's mapping table."""
    torch.manual_seed(seed)
    m = weakclip.build_model("tiny", coattn_layers=OFFICIAL_LAYERS)
    sd = {}
    for k, v in m.state_dict().items():
        v = torch.randn_like(v) * 0.1 if v.is_floating_point() else v
        if k.endswith("running_var"):
            v = v.abs() + 0.5
        if k.startswith("image_encoder.visual."):
            sd["backbone." + k[len("image_encoder.visual.") :]] = v
        elif k.startswith("adapter."):
            sd["backbone." + k[len("adapter.") :]] = v
        elif k.startswith("text_encoder.tower."):
            sd["text_encoder." + k[len("text_encoder.tower.") :]] = v
        elif k == "prompt.contexts":
            sd["contexts"] = v
        elif k in ("coattention.gamma", "coattention.beta"):
            sd[k.split(".")[1]] = v
        elif k.startswith("coattention."):
            rest = k[len("coattention.") :]
            for ours, theirs in (("text_decoder.", "decoder."), ("visual_decoder.", "anti_decoder."),
                                 ("text_out.", "out_proj."), ("visual_out.", "anti_out_proj.")):  # fmt: skip
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours) :]
            sd["context_decoder." + rest] = v
        elif k.startswith(("decoder.lateral_convs.", "decoder.fpn_convs.")):
            _, kind, i, p = k.split(".")
            sd[f"neck.{kind}.{i}.conv.{p}"] = v
        elif k.startswith("decoder."):
            sd["decode_head." + k[len("decoder.") :]] = v
        else:
            raise AssertionError(k)
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


def test_convert_loads_strictly_and_matches_official_coattention(tmp_path):
    sd = official_state_dict()
    torch.save({"meta": {"iter": torch.tensor(20000)}, "state_dict": sd}, tmp_path / "official.pth")
    model = convert(tmp_path / "official.pth", preset="tiny").eval()
    assert model.config.coattn_layers == 1 and model.config.double_cls_embedding
    g, dense, T = torch.randn(2, 64), torch.randn(2, 64, 4, 6), torch.randn(21, 64)
    with torch.no_grad():
        S, _, _ = model.coattention(g, dense, T)
        ref = official_score_map(sd, g, dense, T, heads=model.config.coattn_heads)
    assert (S - ref).abs().max() < 1e-6
    # the whole converted model runs, and the CLI writes a loadable checkpoint
    assert main([str(tmp_path / "official.pth"), str(tmp_path / "ours.safetensors"), "--preset", "tiny"]) == 0
    m2 = weakclip.load_checkpoint(tmp_path / "ours.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m2(x).logits, model(x).logits, rtol=0, atol=0)


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


def test_pickle_checkpoint_is_refused(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil()}}, f)
    with pytest.raises(ValueError, match="refused"):
        convert(tmp_path / "evil.pth")
    assert main([str(tmp_path / "evil.pth"), str(tmp_path / "o.safetensors")]) == 1


def test_missing_official_key_is_listed(tmp_path):
    sd = official_state_dict()
    del sd["context_decoder.anti_decoder.2.norm1.weight"]
    torch.save({"state_dict": sd}, tmp_path / "official.pth")
    with pytest.raises(KeyError, match=r"coattention\.visual_decoder\.0\.norm1\.weight"):
        convert(tmp_path / "official.pth", preset="tiny")
