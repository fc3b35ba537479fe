"""Mistakes a new user makes with generate / evaluate and the files they write: each is one ``error:`` line naming
the file and what was expected (exit status 2), before any slow work, and nothing is overwritten."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_generate import StandInEngine, make_images  # noqa: F401  (registers the "standin" engine)

import weakclip
from weakclip.cli.generate import main
from weakclip.data.io import atomic_path, save_mask_png


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistakes")
    torch.manual_seed(0)
    weakclip.save_checkpoint(weakclip.build_model("tiny"), d / "ckpt.safetensors")
    torch.save({"model": {}, "optimizer": {}, "iteration": 3}, d / "last.pt")
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(g, producer_name="test"), d / "weakclip.onnx")
    make_images(d / "images", 3)
    return d


def _run(capsys, argv) -> tuple[int, str]:
    rc = main([*argv, "--no-progress", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    return rc, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "engine, model, expected",
    [
        (
            "torch",
            "weakclip.onnx",
            r"weakclip.onnx: this is an ONNX model, but the torch engine expects a WeakCLIP "
            r"checkpoint \(.safetensors\); generate --engine onnxruntime \(or auto\)",
        ),
        ("auto", "last.pt", r"last.pt: this is a PyTorch checkpoint .*weakclip convert .*train --resume"),
        ("torch", "last.pt", r"last.pt: this is a PyTorch checkpoint .*but the torch engine expects"),
        (
            "onnxruntime",
            "ckpt.safetensors",
            r"ckpt.safetensors: this is a WeakCLIP checkpoint \(.safetensors\), but "
            r"the onnxruntime engine expects an ONNX model; generate --engine torch",
        ),
        ("auto", "images", r"--model \S*images: a directory; --engine auto expects"),
        ("auto", "nope.safetensors", r"--model \S*nope.safetensors: missing; --engine auto expects"),
    ],
)
def test_wrong_model_file_is_one_line(files, tmp_path, capsys, engine, model, expected):
    rc, err = _run(
        capsys,
        [
            "--engine",
            engine,
            "--model",
            str(files / model),
            "--images",
            str(files / "images"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert rc == 2
    import re

    assert re.search(expected, _one_error_line(err)), err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_unknown_engine_option_is_one_line(files, tmp_path, capsys):
    rc, err = _run(
        capsys,
        [
            "--model",
            str(files / "ckpt.safetensors"),
            "--images",
            str(files / "images"),
            "--out",
            str(tmp_path / "out"),
            "--engine-opt",
            "thread=4",
        ],
    )
    assert rc == 2
    line = _one_error_line(err)
    assert (
        "['thread'] are not options of the torch engine; it takes ['device', 'precision', 'channels_last', 'check_isa', 'cast_weights']"
        in line
    )


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_folder_equal_to_or_containing_the_inputs_is_refused(tmp_path, capsys, overwrite):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(images / f"p{i}.png")
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    for out in (images, tmp_path / "data"):
        argv = ["--engine", "standin", "--images", str(images), "--out", str(out), *(["--overwrite"] * overwrite)]
        rc, err = _run(capsys, argv)
        assert rc == 2
        assert "the input image folder" in _one_error_line(err)
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_resume_with_other_settings_is_refused(files, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--engine", "standin", "--images", str(files / "images"), "--out", str(out)]
    assert _run(capsys, base)[0] == 0
    cfg = (out / "generate_config.json").read_text()
    masks = {p.name: p.read_bytes() for p in out.glob("*.png")}
    rc, err = _run(capsys, [*base, "--scales", "0.5,1"])
    assert rc == 2
    line = _one_error_line(err)
    assert "3 masks there were made with other settings (scales [1.0] → [0.5, 1.0])" in line and "--overwrite" in line
    assert (out / "generate_config.json").read_text() == cfg  # the record still describes the masks
    rc, err = _run(capsys, [*base, "--crf", "none", "--flip"])
    assert rc == 2 and "flip False → True" in err
    assert _run(capsys, base)[0] == 0  # same settings: a resume (nothing to do)
    assert _run(capsys, [*base, "--scales", "0.5,1", "--overwrite"])[0] == 0  # --overwrite redoes
    assert {p.name for p in out.glob("*.png")} == set(masks)
    assert '"scales": [\n      0.5,\n      1.0\n    ]' in (out / "generate_config.json").read_text()


def test_foreign_masks_without_a_record_are_refused(files, tmp_path, capsys):
    out = tmp_path / "out"
    save_mask_png(out / "img_0000.png", np.zeros((4, 4), np.uint8))
    rc, err = _run(capsys, ["--engine", "standin", "--images", str(files / "images"), "--out", str(out)])
    assert rc == 2 and "no readable generate_config.json" in _one_error_line(err)


def test_crf_without_pydensecrf_fails_before_the_first_image(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    rc, err = _run(
        capsys, ["--engine", "standin", "--images", str(files / "images"), "--out", str(tmp_path / "o"), "--crf", "voc"]
    )
    assert rc == 2 and "--crf voc needs pydensecrf" in _one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_unsupported_files_are_counted(files, tmp_path, capsys):
    images = tmp_path / "images"
    make_images(images, 2)
    (images / "notes.txt").write_text("x")
    (images / "a.xml").write_text("x")
    (images / "b.xml").write_text("x")
    rc = main(["--engine", "standin", "--images", str(images), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0
    assert "3 file(s) are not images and are not read (1 × .txt, 2 × .xml)" in capsys.readouterr().out


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
        save_mask_png(tmp_path / "m.png", np.zeros((2, 2), np.uint8))
    finally:
        os.umask(old)
    for name in ("f.bin", "m.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
