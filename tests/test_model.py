"""Model library: parameter counts, shapes, freezing, co-attention vs its reference, prompts, config, checkpoints."""

import pytest
import torch

import weakclip
from weakclip.model.coattention import CoAttentionMatching, _layer_ref, coattention_reference
from weakclip.model.model import parameter_table


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return weakclip.build_model("tiny")


def test_vit_b16_parameter_counts():
    m = weakclip.build_model("vit_b16_voc")
    rows = {name: (total, train) for name, total, train in parameter_table(m)}
    total, train = rows["total"]
    assert abs(total - 171.47e6) / 171.47e6 < 0.005, total
    assert abs(train - 21.24e6) / 21.24e6 < 0.005, train
    assert abs(train / total - 0.124) < 0.001
    # per component (SPEC §1)
    assert abs(rows["adapter"][1] - 7.09e6) / 7.09e6 < 0.005
    assert abs(rows["coattention"][1] - 6.84e6) / 6.84e6 < 0.005
    assert rows["prompt"][1] + 2 * 512 == 5120  # 8 contexts × 512 + γ + β
    assert not any(p.requires_grad for p in m.image_encoder.parameters())
    assert not any(p.requires_grad for p in m.text_encoder.parameters())


def test_only_trainable_parameters_get_gradients(tiny):
    tiny.train()
    tiny.zero_grad(set_to_none=True)
    out = tiny(torch.randn(2, 3, 64, 64))
    (out.logits.square().mean() + out.score_map.mean()).backward()
    for name, p in tiny.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    for name in ("prompt.contexts", "coattention.gamma", "coattention.beta"):
        assert dict(tiny.named_parameters())[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("hw", [(512, 512), (320, 320), (384, 512)])
def test_output_shapes(tiny, hw):
    H, W = hw
    tiny.eval()
    with torch.no_grad():
        out = tiny(torch.randn(1, 3, H, W))
    K = tiny.config.num_classes
    assert out.logits.shape == (1, K, H // 4, W // 4)
    assert out.score_map.shape == (1, K, H // 16, W // 16)
    assert out.score_map.abs().max() <= 1 + 1e-5


def test_text_embeddings_shape_and_precomputed_equivalence(tiny):
    tiny.eval()
    T = tiny.text_embeddings()
    assert T.shape == (tiny.config.num_classes, tiny.config.embed_dim)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = tiny(x).logits
        b = tiny(x, text_embeddings=T).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _coattn(layers):
    torch.manual_seed(1)
    return CoAttentionMatching(embed_dim=64, width=32, heads=2, layers=layers).eval()


@pytest.mark.parametrize("layers", [1, 3])
def test_coattention_equals_reference(layers):
    m = _coattn(layers)
    with torch.no_grad():
        m.gamma.uniform_(-1, 1)  # non-trivial residual scales so every branch matters
        m.beta.uniform_(-1, 1)
    g, dense, T = torch.randn(2, 64), torch.randn(2, 64, 5, 7), torch.randn(6, 64)
    with torch.no_grad():
        S, _, _ = m(g, dense, T)
        ref = coattention_reference(m.state_dict(), g, dense, T, heads=2, layers=layers)
    assert S.shape == (2, 6, 5, 7)
    assert (S - ref).abs().max() < 1e-6


def test_coattention_layers_are_chained():
    """3 layers are chained (layer i takes layer i-1's output), not each fed the original queries."""
    m = _coattn(3)
    sd = m.state_dict()
    V, T = torch.randn(1, 11, 64), torch.randn(4, 64)
    with torch.no_grad():
        _, T_star = m.match(V, T)
        mem = m.memory_proj(V)
        t0 = m.text_proj(T)[None]
        chained = t0
        for i in range(3):
            chained = _layer_ref(chained, mem, sd, f"text_decoder.{i}", 2)
        parallel_last = _layer_ref(t0, mem, sd, "text_decoder.2", 2)  # the official scheme
        expect = T[None] + m.gamma * m.text_out(chained)
        official = T[None] + m.gamma * m.text_out(parallel_last)
    assert (T_star - expect).abs().max() < 1e-6
    assert (T_star - official).abs().max() > 1e-4


def test_long_class_name_is_rejected():
    with pytest.raises(ValueError, match="hippopotamus rhinoceros"):
        weakclip.build_model("tiny", class_names=("background", "hippopotamus rhinoceros"))


def test_unknown_config_key_is_rejected():
    with pytest.raises(KeyError, match="no_such_key"):
        weakclip.build_model("tiny", no_such_key=3)
    with pytest.raises(KeyError, match="unknown preset"):
        weakclip.build_model("vit_h14")


def test_checkpoint_round_trip(tiny, tmp_path):
    tiny.eval()
    p = weakclip.save_checkpoint(tiny, tmp_path / "m.safetensors")
    assert not [f for f in tmp_path.iterdir() if f.name != "m.safetensors"]  # no temporary files left
    m2 = weakclip.load_checkpoint(p).eval()
    assert m2.config == tiny.config
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(m2(x).logits, tiny(x).logits, rtol=0, atol=0)


def test_checkpoint_missing_key_is_listed(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    p = weakclip.save_checkpoint(tiny, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(p))
    del sd["coattention.gamma"]
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(KeyError, match=r"missing keys 1 \(coattention.gamma\)"):
        weakclip.load_checkpoint(tmp_path / "bad.safetensors")


def test_local_clip_weights_file_is_loaded(tmp_path):
    """A local OpenAI-layout state dict (14×14-style grid, 77-row text table) loads with resizing."""
    torch.manual_seed(3)
    src = weakclip.build_model("tiny", crop_size=64)  # 4×4 grid standing in for the pretrain grid
    sd = {"visual." + k: v for k, v in src.image_encoder.visual.state_dict().items()}
    sd.update(src.text_encoder.tower.state_dict())
    sd["positional_embedding"] = torch.cat([sd["positional_embedding"], torch.randn(64, 64)])  # 77-row table
    sd["logit_scale"] = torch.tensor(4.6)
    torch.save(sd, tmp_path / "clip.pt")
    m = weakclip.build_model("tiny", clip_weights=str(tmp_path / "clip.pt"))  # crop 128 → 8×8 grid
    torch.testing.assert_close(m.image_encoder.visual.conv1.weight, src.image_encoder.visual.conv1.weight)
    assert m.image_encoder.visual.positional_embedding.shape == (1 + 8 * 8, 64)
    torch.testing.assert_close(
        m.text_encoder.tower.positional_embedding, src.text_encoder.tower.positional_embedding[:13]
    )
    # the resized grid reproduces the source when sampled back at the source size
    from weakclip.model.clip import resize_pos_embed

    back = resize_pos_embed(m.image_encoder.visual.positional_embedding, 8, (4, 4))
    assert back.shape == src.image_encoder.visual.positional_embedding.shape
    del sd["visual.conv1.weight"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="conv1.weight"):
        weakclip.build_model("tiny", clip_weights=str(tmp_path / "broken.pt"))


def test_openai_weights_unavailable_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from weakclip.model.clip import WeightsUnavailableError, openai_weights_path

    with pytest.raises(WeightsUnavailableError, match="clip_weights="):
        openai_weights_path("ViT-B-16")
