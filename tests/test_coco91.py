"""The official COCO layout end to end: a 91-slot model (category-id slots, unused ones kept) → generate with
image-level labels → evaluate with the class list the masks' generate_config.json records."""

from __future__ import annotations

import json

import numpy as np
import torch
from test_generate import make_images

import weakclip
from weakclip.cli.evaluate import main as evaluate
from weakclip.cli.generate import main as generate
from weakclip.data.classes import COCO_OFFICIAL91_CLASSES
from weakclip.data.io import read_mask, save_mask_png


def test_coco91_generate_and_evaluate(tmp_path, capsys):
    torch.manual_seed(0)
    model = weakclip.build_model("tiny", class_names=COCO_OFFICIAL91_CLASSES, crop_size=64)
    assert model.config.num_classes == 91 and model.config.class_names[12] == "street sign"
    ckpt = tmp_path / "coco91.safetensors"
    weakclip.save_checkpoint(model, ckpt)
    names = make_images(tmp_path / "images", 3)
    labels = {n: [1, 90] for n in names}  # person, toothbrush (category ids 1 and 90)
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "masks"
    assert (
        generate(
            [
                "--model",
                str(ckpt),
                "--images",
                str(tmp_path / "images"),
                "--out",
                str(out),
                "--labels",
                str(tmp_path / "labels.json"),
                "--no-progress",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "generate_config.json").read_text())
    assert cfg["engine"]["class_names"] == list(COCO_OFFICIAL91_CLASSES)
    for n in names:
        assert set(np.unique(read_mask(out / f"{n}.png")).tolist()) <= {0, 1, 90, 255}
    # ground truth in the 91-slot layout (category ids as values); the class list comes from generate_config.json
    for n in names:
        m = read_mask(out / f"{n}.png")
        gt = np.where(m == 255, 90, m).astype(np.uint8)
        save_mask_png(tmp_path / "gt" / f"{n}.png", gt)
    res = tmp_path / "m.json"
    capsys.readouterr()
    assert evaluate(["--pred", str(out), "--gt", str(tmp_path / "gt"), "--json", str(res)]) == 0
    assert "91 classes from" in capsys.readouterr().out
    per_class = json.loads(res.read_text())["per_class"]
    assert len(per_class) == 91 and per_class[90]["name"] == "toothbrush"
