"""CLIP weights in TorchScript archives are read as data: no code from the file runs (``torch.jit.load`` does run it).

A real OpenAI ``ViT-B-16.pt`` cannot be downloaded here, so the tests save (``torch.jit.save``) a tiny module with
the attribute tree of OpenAI's CLIP module (``visual.*``, ``transformer.*``, ``token_embedding``,
``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``), traced and cast to float16 like the
released files, under the name ``ViT-B-16.pt``: the archive then has OpenAI's layout (``ViT-B-16/data.pkl``,
``ViT-B-16/data/0…N``, ``ViT-B-16/constants.pkl``, ``ViT-B-16/code/…``).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import weakclip
from weakclip.errors import UsageError
from weakclip.model.torchscript_weights import is_torchscript_archive, read_torchscript_state_dict

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # torch.jit.* deprecation notices


# ----------------------------------------------------------------------------------------------------------------
# modules saved as TorchScript by the tests (module level: torch.jit.script needs their source)


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4, bias=False)  # a None parameter slot (bias)
        self.register_buffer("buf", torch.arange(3.0))
        self.plain = torch.ones(2)  # a plain tensor attribute: not in the state dict
        self.p = nn.Parameter(torch.randn(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.buf.sum() + self.plain.sum() + self.p.sum()


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _Inner(), _Inner()
        self.b.lin.weight = self.a.lin.weight  # tied: one storage, two names
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.scale = nn.Parameter(torch.tensor(2.0).half())
        self.register_buffer("count", torch.tensor([3, 4], dtype=torch.int64))
        self.view = nn.Parameter(torch.randn(6, 5)[1:4, ::2].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(self.a(x) + self.b(x)) * self.scale.float() + self.count.sum() + self.view.sum()


class _WritesAFileOnLoad(nn.Module):
    """Its ``__setstate__`` (run by ``torch.jit.load``) creates ``target`` and writes b"AAAA" into it."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.target = state[1]
        self.training = state[2]
        t = torch.from_file(self.target, True, 4, dtype=torch.uint8)
        t.fill_(65)
        self.weight = state[0] + t.sum().float() * 0.0


class _CLIPWithPayload(nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.visual = _WritesAFileOnLoad(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


class _OpenAICLIPLike(nn.Module):
    """The attribute tree of OpenAI's ``model.CLIP`` around the tiny preset's towers (77-row text positions)."""

    def __init__(self, model: weakclip.WeakCLIP) -> None:
        super().__init__()
        tower = model.text_encoder.tower
        self.visual = model.image_encoder.visual
        self.transformer = tower.transformer
        self.token_embedding = tower.token_embedding
        pos = tower.positional_embedding.detach()
        self.positional_embedding = nn.Parameter(torch.cat([pos, torch.randn(77 - pos.shape[0], pos.shape[1])]))
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image) * self.logit_scale.exp()


def _jit_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def _assert_same(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert torch.equal(got[k], ref[k]), k


@pytest.fixture(scope="module")
def openai_like(tmp_path_factory) -> tuple[Path, weakclip.WeakCLIP]:
    """(ViT-B-16.pt in OpenAI's layout, float16 like the released files; the source model at crop 64)."""
    torch.manual_seed(7)
    src = weakclip.build_model("tiny", crop_size=64).eval()  # 4×4 positional grid stands in for the 14×14
    traced = torch.jit.trace(_OpenAICLIPLike(src).eval(), torch.randn(1, 3, 64, 64), check_trace=False).half()
    path = tmp_path_factory.mktemp("openai") / "ViT-B-16.pt"
    torch.jit.save(traced, str(path))
    return path, src


# ----------------------------------------------------------------------------------------------------------------
# (1) the safe reader gives torch.jit.load's state dict


def test_reader_equals_jit_load_on_scripted_and_traced_modules(tmp_path):
    torch.manual_seed(0)
    module = _Outer()
    for kind, saved in (("script", torch.jit.script(module)), ("trace", torch.jit.trace(module, torch.randn(1, 3)))):
        path = tmp_path / f"{kind}.pt"
        torch.jit.save(saved, str(path))
        assert is_torchscript_archive(path)
        ref = _jit_state_dict(path)
        assert "a.plain" not in ref and "a.lin.bias" not in ref and ref["scale"].dtype == torch.float16
        _assert_same(read_torchscript_state_dict(path), ref)


def test_reader_equals_jit_load_on_openai_layout(openai_like):
    path, _ = openai_like
    names = zipfile.ZipFile(path).namelist()
    assert {"ViT-B-16/data.pkl", "ViT-B-16/data/0", "ViT-B-16/constants.pkl"} <= set(names)
    assert any(n.startswith("ViT-B-16/code/__torch__/") for n in names)
    ref = _jit_state_dict(path)
    assert "visual.conv1.weight" in ref and "positional_embedding" in ref and ref["logit_scale"].dtype == torch.half
    _assert_same(read_torchscript_state_dict(path), ref)


# ----------------------------------------------------------------------------------------------------------------
# (3) every loading path goes through the reader, never torch.jit.load


@pytest.fixture
def no_jit_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called on a CLIP weights file")

    monkeypatch.setattr(torch.jit, "load", refuse)


def test_build_model_reads_openai_archive_without_jit_load(openai_like, no_jit_load):
    path, src = openai_like
    m = weakclip.build_model("tiny", clip_weights=str(path))  # crop 128: the 4×4 grid is resized to 8×8
    half = {k: v.half().float() for k, v in src.state_dict().items()}
    for name in (
        "image_encoder.visual.conv1.weight",
        "image_encoder.visual.transformer.resblocks.0.attn.in_proj_weight",
        "text_encoder.tower.token_embedding.weight",
        "text_encoder.tower.text_projection",
    ):
        torch.testing.assert_close(m.state_dict()[name], half[name], rtol=0, atol=0)
    assert m.state_dict()["image_encoder.visual.conv1.weight"].dtype == torch.float32
    torch.testing.assert_close(
        m.text_encoder.tower.positional_embedding, half["text_encoder.tower.positional_embedding"], rtol=0, atol=0
    )
    assert m.image_encoder.visual.positional_embedding.shape == (1 + 8 * 8, 64)


def test_seeder_reads_openai_archive_without_jit_load(openai_like, no_jit_load):
    from weakclip.masks.seeds import build_seeder

    path, src = openai_like
    seeder = build_seeder("tiny", clip_weights=str(path))
    torch.testing.assert_close(
        seeder.visual.conv1.weight,
        src.image_encoder.visual.conv1.weight.detach().half().float(),
        rtol=0,
        atol=0,
    )


# ----------------------------------------------------------------------------------------------------------------
# (2) archives that run code on load: nothing is written, one line naming the file


def _payload_archive(tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "written_by_setstate"
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(_CLIPWithPayload(str(target))), str(path))
    return path, target


def test_setstate_payload_runs_under_jit_load(tmp_path):
    """The payload is real: torch.jit.load writes the file (so the tests below can fail)."""
    path, target = _payload_archive(tmp_path)
    assert not target.exists()
    torch.jit.load(str(path))
    assert target.read_bytes() == b"AAAA"


def _check_refusal(message: str, path: Path, target: Path) -> None:
    assert not target.exists(), "code from the archive ran"
    assert str(path) in message and "\n" not in message.strip()


def test_setstate_payload_is_refused_by_every_loading_path(tmp_path, no_jit_load, capsys):
    path, target = _payload_archive(tmp_path)
    with pytest.raises(UsageError) as e:
        read_torchscript_state_dict(path)
    _check_refusal(str(e.value), path, target)
    assert "__setstate__" in str(e.value)
    with pytest.raises(UsageError) as e:
        weakclip.build_model("tiny", clip_weights=str(path))
    _check_refusal(str(e.value), path, target)

    from weakclip.cli.seeds import main

    images = tmp_path / "images"
    images.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(images / "a.jpg"), np.full((40, 48, 3), 120, np.uint8))
    (tmp_path / "labels.json").write_text('{"a": [1]}')
    argv = [
        "--images",
        str(images),
        "--labels",
        str(tmp_path / "labels.json"),
        "--out",
        str(tmp_path / "seeds"),
        "--preset",
        "tiny",
        "--clip-weights",
        str(path),
        "--crf",
        "none",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    _check_refusal(err[0], path, target)
    assert not list((tmp_path / "seeds").glob("*.png"))


class _Reduce:
    def __init__(self, fn, arg: str) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("how", ["builtins.exec", "os.system"])
def test_data_pkl_with_a_code_global_is_refused(tmp_path, openai_like, how):
    target = tmp_path / "written_by_pickle"
    if how == "builtins.exec":
        payload = pickle.dumps(_Reduce(exec, f"open({str(target)!r}, 'w').write('x')"), protocol=2)
    else:
        payload = pickle.dumps(_Reduce(os.system, f"touch '{target}'"), protocol=2)
    pickle.loads(payload)  # the payload is real: plain unpickling writes the file
    assert target.exists()
    target.unlink()

    src, _ = openai_like
    path = tmp_path / "ViT-B-16.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, payload if info.filename == "ViT-B-16/data.pkl" else zin.read(info))
    with pytest.raises(UsageError) as e:
        weakclip.build_model("tiny", clip_weights=str(path))
    _check_refusal(str(e.value), path, target)
    assert ("exec" if how == "builtins.exec" else "system") in str(e.value)


def test_tensor_outside_its_storage_is_refused(tmp_path, openai_like):
    """A storage record shorter than its declared size is refused, not read past its end."""
    src, _ = openai_like
    path = tmp_path / "short.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data[:-2] if info.filename == "ViT-B-16/data/0" else data)
    with pytest.raises(UsageError, match="ViT-B-16/data/0 holds"):
        read_torchscript_state_dict(path)
