"""Confusion matrix / mIoU against a hand-computed example; CLI errors name the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weakclip.cli.evaluate import main
from weakclip.data.io import save_mask_png
from weakclip.data.metrics import ConfusionMatrix
from weakclip.masks.evaluate import evaluate_dirs

# GT (255 ignored) and prediction (255 = unknown → a false negative of the GT class).
GT = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
PRED = np.array([[0, 1, 1], [255, 2, 0]], np.uint8)
# class 0: TP 1, FP 0, FN 1 (pixel (0,1) predicted 1)        → IoU 1/2
# class 1: TP 1, FP 1 (pixel (0,1)), FN 1 (pixel (1,0) = 255) → IoU 1/3
# class 2: TP 1                                              → IoU 1
# class 3: absent everywhere                                 → NaN, not in the mean
EXPECTED_IOU = [1 / 2, 1 / 3, 1.0]


def test_hand_computed_miou():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    m = cm.compute()
    np.testing.assert_allclose(m.iou[:3], EXPECTED_IOU)
    assert np.isnan(m.iou[3])
    assert m.miou == pytest.approx(np.mean(EXPECTED_IOU))
    np.testing.assert_allclose(m.fp[:3], [0, 1 / 3, 0])
    np.testing.assert_allclose(m.fn[:3], [1 / 2, 1 / 3, 0])
    np.testing.assert_allclose((m.iou + m.fp + m.fn)[:3], 1.0)
    assert m.pixel_acc == pytest.approx(3 / 5)
    assert m.unknown == pytest.approx(1 / 5)
    assert m.gt_pixels.tolist() == [2, 2, 1, 0]


def test_dataset_level_not_image_mean():
    """Two images accumulate into one matrix (the IoU of the sums, not the mean of per-image IoUs)."""
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((2, 2), np.uint8), np.array([[0, 0], [0, 1]], np.uint8))  # class 1: FN 1
    cm.update(np.ones((1, 4), np.uint8), np.ones((1, 4), np.uint8))  # class 1: TP 4
    m = cm.compute()
    assert m.iou[1] == pytest.approx(4 / 5)
    assert m.iou[0] == pytest.approx(3 / 4)


def test_update_accepts_torch_and_rejects_bad_values():
    torch = pytest.importorskip("torch")
    cm = ConfusionMatrix(4)
    cm.update(torch.from_numpy(PRED.astype(np.int64)), torch.from_numpy(GT))
    assert cm.compute().miou == pytest.approx(np.mean(EXPECTED_IOU))
    with pytest.raises(ValueError, match="prediction has class 4"):
        cm.update(np.full((2, 2), 4, np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="ground truth has class 7"):
        cm.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 7, np.uint8))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.uint8))


def _write_pair(tmp_path, name, pred, gt):
    save_mask_png(tmp_path / "pred" / f"{name}.png", pred)
    save_mask_png(tmp_path / "gt" / f"{name}.png", gt, palette=False)


def test_cli_json_plot_and_class_names(tmp_path):
    _write_pair(tmp_path, "a", PRED, GT)
    (tmp_path / "names.txt").write_text("background\ncat\ndog\ndining table\n")
    out, plot = tmp_path / "m.json", tmp_path / "iou.png"
    argv = [
        "--pred",
        str(tmp_path / "pred"),
        "--gt",
        str(tmp_path / "gt"),
        "--class-names",
        str(tmp_path / "names.txt"),
    ]
    assert main([*argv, "--json", str(out), "--plot", str(plot)]) == 0
    d = json.loads(out.read_text())
    assert d["miou"] == pytest.approx(np.mean(EXPECTED_IOU))
    assert d["num_images"] == 1
    assert [c["name"] for c in d["per_class"]] == ["background", "cat", "dog", "dining table"]
    assert d["per_class"][3]["iou"] is None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    _write_pair(tmp_path, "a", PRED, GT)
    (tmp_path / "list.txt").write_text("a\nb\n")
    rc = main(
        [
            "--pred",
            str(tmp_path / "pred"),
            "--gt",
            str(tmp_path / "gt"),
            "--list",
            str(tmp_path / "list.txt"),
            "--num-classes",
            "4",
        ]
    )
    assert rc == 2
    assert str(tmp_path / "pred" / "b.png") in capsys.readouterr().err
    save_mask_png(tmp_path / "pred" / "c.png", PRED)  # prediction without GT
    with pytest.raises(FileNotFoundError, match=r"gt/c\.png"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "gt", 4)


def test_size_mismatch_is_a_clear_error(tmp_path):
    _write_pair(tmp_path, "a", PRED, np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"pred/a\.png: size 3×2 != ground truth"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "gt", 4)


def test_class_list_comes_from_the_data_or_a_flag_never_a_silent_default(tmp_path, capsys):
    _write_pair(tmp_path, "a", PRED, GT)
    argv = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot tell the class list" in err and len(err.strip().splitlines()) == 1
    # the predictions' generate_config.json names the model's classes
    names = ["background", "cat", "dog", "dining table"]
    (tmp_path / "pred" / "generate_config.json").write_text(json.dumps({"engine": {"class_names": names}}))
    out = tmp_path / "m.json"
    assert main([*argv, "--json", str(out)]) == 0
    assert [c["name"] for c in json.loads(out.read_text())["per_class"]] == names
    assert "4 classes from" in capsys.readouterr().out


def test_ground_truth_without_prediction_is_reported(tmp_path, capsys):
    _write_pair(tmp_path, "a", PRED, GT)
    for n in ("b", "c"):
        save_mask_png(tmp_path / "gt" / f"{n}.png", GT)
    out = tmp_path / "m.json"
    assert (
        main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "4", "--json", str(out)])
        == 0
    )
    assert "2 of 3 ground-truth images have no prediction" in capsys.readouterr().out
    assert json.loads(out.read_text())["gt_without_prediction"] == 2
