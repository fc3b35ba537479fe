"""weakclip check-data on the synthetic VOC-layout set: clean → exit 0; each kind of broken dataset → a problem line
naming the file, exit 1; no root → one usage line, exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from weakclip.cli.check_data import main
from weakclip.data.io import save_mask_png
from weakclip.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("check") / "syn"
    make_synthetic_dataset(root, 8, 0, num_fg=5, size=(64, 64), val_images=2)
    return root


@pytest.fixture
def root(clean, tmp_path):
    dst = tmp_path / "syn"
    shutil.copytree(clean, dst)
    return dst


def test_clean_dataset_passes(root, capsys):
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "layout from config synthetic_tiny (its JPEGImages/ and SeedMasks/ are under root)" in out
    assert "images: 10 in" in out and "list train.txt: 8 names" in out and "labels: 10 images" in out
    assert "class values found in masks: 0..5" in out and "OK:" in out


def test_broken_dataset_is_reported(root, capsys):
    (root / "JPEGImages" / "train_000001.jpg").unlink()  # listed image missing
    (root / "SeedMasks" / "train_000002.png").unlink()  # seed missing
    save_mask_png(root / "SegmentationClass" / "train_000003.png", np.full((64, 64), 9, np.uint8))  # class ≥ K
    save_mask_png(root / "SeedMasks" / "train_000004.png", np.zeros((10, 12), np.uint8))  # wrong size
    (root / "JPEGImages" / "train_000005.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")  # corrupt
    labels = json.loads((root / "cls_labels.json").read_text())
    del labels["train_000006"]
    (root / "cls_labels.json").write_text(json.dumps(labels))
    (root / "JPEGImages" / "notes.txt").write_text("x")
    assert main([str(root)]) == 1
    out = capsys.readouterr().out
    problems = [ln for ln in out.splitlines() if ln.startswith("problem:")]
    text = "\n".join(problems)
    assert "train.txt: 1 name(s) have no .jpg" in text and "train_000001" in text
    assert "no seeds mask for 1 name(s) of the training list: train_000002" in text
    assert "train_000003.png: class values [9] ≥ K = 6" in text
    assert "train_000004.png: size 12×10 != image 64×64" in text
    assert "train_000005.jpg: cannot decode image" in text
    assert "no image-level label for 1 training image(s): train_000006" in text
    assert "1 file(s) there are not images (1 .txt)" in out


def test_missing_root_is_a_usage_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such dataset folder" in err and "\n" not in err


def test_official_layouts_and_the_path_rule(tmp_path, monkeypatch, capsys):
    """Official VOC / COCO layouts are found through the shipped configs; command-line paths are relative to the
    current directory (a root-relative --labels is a usage error naming the option), config paths to the root."""
    from test_readme_route import make_coco, make_voc

    make_voc(tmp_path / "data" / "VOCdevkit" / "VOC2012")
    make_coco(tmp_path / "data" / "COCO14")
    monkeypatch.chdir(tmp_path)
    voc = "data/VOCdevkit/VOC2012"
    assert main([voc, "--labels", "cls_labels.npy"]) == 2  # the old, root-relative spelling
    err = capsys.readouterr().err
    assert "--labels cls_labels.npy: file not found" in err and "current directory" in err
    assert main([voc, "--labels", f"{voc}/cls_labels.npy"]) == 0
    out = capsys.readouterr().out
    assert "layout from config voc_vit_b16" in out and "SegmentationClassAugPseudoMaskMCT" in out
    assert "list train.txt: 2 names" in out and "list trainaug.txt: 3 names" in out and "list val.txt: 1 names" in out
    assert "labels: 5 images in" in out and "21 classes from model.preset vit_b16_voc" in out
    # COCO: detected without --config; the 80-dim MCTformer vectors read for the 91 slots with --classes coco91
    assert main(["data/COCO14", "--labels", "data/COCO14/cls_labels.npy"]) == 0
    out = capsys.readouterr().out
    assert "layout from config coco_vit_b16" in out and "81 classes from model.preset vit_b16_coco" in out
    assert "list val_5000.txt: 1 names" in out and "voc_format/cocoPGTMCT" in out
    assert (
        main(
            ["data/COCO14", "--config", "coco_vit_b16", "--classes", "coco91", "--labels", "data/COCO14/cls_labels.npy"]
        )
        == 0
    )
    assert "labels: 3 images in data/COCO14/cls_labels.npy" in capsys.readouterr().out
    # a command-line folder that is only valid under the root is refused
    assert main(["data/COCO14", "--seed-dir", "voc_format/cocoPGTMCT"]) == 2
    assert "--seed-dir voc_format/cocoPGTMCT: no such folder" in capsys.readouterr().err
    # a wrong layout is reported against the config key it came from
    (tmp_path / voc / "ImageSets/Segmentation/trainaug.txt").unlink()
    assert main([voc, "--config", "voc_vit_b16"]) == 1
    assert "problem: list 'trainaug.txt' not found under data/VOCdevkit/VOC2012 (data.train_lists)" in (
        capsys.readouterr().out
    )


def test_help_states_the_path_rule(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "every path given on this command line" in text and "relative to the current directory" in text
    assert "relative to ROOT" in text
