"""Data: synthetic generator, label readers (incl. the restricted unpickler), augmentation, dataset and its errors."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakclip.cli.synthetic import main as synthetic_main
from weakclip.data import datasets, labels, synthetic, transforms
from weakclip.data.io import read_mask, save_mask_png

SMALL = dict(images=10, num_fg=4, size=(64, 64), val_images=3)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "ds"
    synthetic.make_synthetic_dataset(root, seed=11, max_size=(72, 80), **SMALL)
    return root


@pytest.fixture
def syn_copy(syn_root, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(syn_root, dst)
    return dst


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- synthetic generator
def test_synthetic_deterministic_per_seed(tmp_path):
    a = synthetic.make_synthetic_dataset(tmp_path / "a", seed=3, **SMALL)
    b = synthetic.make_synthetic_dataset(tmp_path / "b", seed=3, **SMALL)
    c = synthetic.make_synthetic_dataset(tmp_path / "c", seed=4, **SMALL)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb and a["seed_miou"] == b["seed_miou"]
    assert fa.keys() == fc.keys() and c["seed_miou"] != a["seed_miou"]
    differing = [k for k in fa if k.startswith("JPEGImages/") and fa[k] != fc[k]]
    assert len(differing) == SMALL["images"] + SMALL["val_images"]
    assert not list((tmp_path / "a").rglob("*.tmp*"))  # atomic writes leave no temporaries


def test_synthetic_layout_and_seed_miou_in_range(tmp_path):
    s = synthetic.make_synthetic_dataset(tmp_path, images=40, seed=0, size=(96, 96), val_images=2)
    assert 0.45 <= s["seed_miou"] <= 0.65, s["seed_iou_per_class"]
    names = (tmp_path / "class_names.txt").read_text().split()
    assert names == ["background", "aeroplane", "bicycle", "bird", "boat", "bottle"]
    train = (tmp_path / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (tmp_path / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 40 and len(val) == 2 and not set(train) & set(val)
    cls = json.loads((tmp_path / "cls_labels.json").read_text())
    n_border = 0
    for name in train[:10]:
        gt = read_mask(tmp_path / "SegmentationClass" / f"{name}.png")
        seed = read_mask(tmp_path / "SeedMasks" / f"{name}.png")
        assert Image.open(tmp_path / "SegmentationClass" / f"{name}.png").mode == "P"
        assert gt.shape == seed.shape == (96, 96)
        assert cls[name] == labels.labels_from_mask(gt) and cls[name]
        assert set(np.unique(seed).tolist()) <= set(range(6)) | {255}
        n_border += (gt == 255).sum()
    assert n_border > 0  # thin 255 borders like VOC


def test_synthetic_cli(tmp_path, capsys):
    rc = synthetic_main(["--out", str(tmp_path), "--images", "4", "--seed", "1", "--size", "48", "48", "--val", "1"])
    assert rc == 0
    s = json.loads((tmp_path / "synthetic_meta.json").read_text())
    printed = capsys.readouterr().out
    assert "seeds' mIoU" in printed and f"{100 * s['seed_miou']:.1f}" in printed
    assert len(list((tmp_path / "JPEGImages").glob("*.jpg"))) == 5


# ------------------------------------------------------------------------------------------- label readers
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cls_labels_npy_restricted_unpickler(tmp_path):
    d = {"2007_000032": np.eye(20, dtype=np.float32)[0] + np.eye(20, dtype=np.float32)[14], "x": np.zeros(20)}
    np.save(tmp_path / "cls_labels.npy", d)
    assert labels.read_cls_labels_npy(tmp_path / "cls_labels.npy", num_classes=21) == {
        "2007_000032": [1, 15],
        "x": [],
    }
    assert labels.load_labels(tmp_path / "cls_labels.npy") == {"2007_000032": [1, 15], "x": []}
    with pytest.raises(ValueError, match="expected 80"):
        labels.read_cls_labels_npy(tmp_path / "cls_labels.npy", num_classes=81)

    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", {"a": _Evil(marker)}, allow_pickle=True)
    with pytest.raises(ValueError, match=r"evil\.npy.*refusing to load global .*system"):
        labels.read_cls_labels_npy(tmp_path / "evil.npy")
    assert not marker.exists()  # the payload never ran


def test_json_txt_and_seed_labels(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"a": [3, 1], "b": []}))
    assert labels.load_labels(tmp_path / "l.json", 21) == {"a": [1, 3], "b": []}
    (tmp_path / "l.txt").write_text("a 3 1\n\nb\n")
    assert labels.load_labels(tmp_path / "l.txt", 21) == {"a": [1, 3], "b": []}
    (tmp_path / "bad.txt").write_text("a 0 2\n")
    with pytest.raises(ValueError, match=r"bad\.txt.*class index 0"):
        labels.load_labels(tmp_path / "bad.txt")
    (tmp_path / "big.json").write_text(json.dumps({"a": [21]}))
    with pytest.raises(ValueError, match=r"big\.json.*21"):
        labels.load_labels(tmp_path / "big.json", 21)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        labels.load_labels(tmp_path / "nope.json")
    assert labels.labels_from_mask(np.array([[0, 4, 255], [2, 4, 0]], np.uint8)) == [2, 4]


def test_cam_npy_needs_opt_in(tmp_path):
    cams = {0: np.ones((4, 5), np.float32), 14: np.zeros((4, 5), np.float32)}
    np.save(tmp_path / "cam.npy", cams)
    with pytest.raises(ValueError, match=r"cam\.npy.*allow_pickle_cams=True"):
        datasets.read_cam_npy(tmp_path / "cam.npy")
    out = datasets.read_cam_npy(tmp_path / "cam.npy", allow_pickle_cams=True)
    assert sorted(out) == [1, 15] and out[1].shape == (4, 5)
    np.save(tmp_path / "plain.npy", np.ones((2, 3, 3)))
    assert datasets.read_cam_npy(tmp_path / "plain.npy").shape == (2, 3, 3)


# ------------------------------------------------------------------------------------------- augmentation
def test_train_transform_shapes_padding_and_determinism():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 120, 3), dtype=np.uint8)
    label = np.zeros((20, 120), np.uint8)
    label[5:15, 20:110] = 3
    t = transforms.TrainTransform(crop_size=128)
    assert t.scale == (512, 128)
    # Ratio fixed at 1: the 20x120 image is rescaled to fit (512, 128) → 85x512, cropped to 85x128, padded to 128.
    t1 = transforms.TrainTransform(crop_size=128, ratio_range=(1.0, 1.0), photometric=False, flip_prob=0.0)
    img, lab = t1(image, label, np.random.default_rng(1))
    assert img.shape == (3, 128, 128) and img.dtype == torch.float32
    assert lab.shape == (128, 128) and lab.dtype == torch.int64
    assert (img[:, 85:] == 0).all() and (lab[85:] == 255).all()
    assert set(torch.unique(lab[:85]).tolist()) == {0, 3}
    for seed in range(5):
        a = t(image, label, np.random.default_rng(seed))
        b = t(image, label, np.random.default_rng(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[0].shape == (3, 128, 128) and a[1].shape == (128, 128)
        assert set(torch.unique(a[1]).tolist()) <= {0, 3, 255}


def test_random_crop_cat_max_ratio_and_photometric():
    label = np.zeros((100, 100), np.uint8)
    label[:, 90:] = 1  # only the right edge has a second class
    image = np.zeros((100, 100, 3), np.uint8)
    hits = 0
    for seed in range(20):
        _, lab = transforms.random_crop(image, label, np.random.default_rng(seed), (20, 20))
        counts = np.bincount(lab.ravel(), minlength=2)
        hits += counts.max() / counts.sum() < 0.75
    assert hits >= 5  # the retries find mixed crops far more often than the 1-in-9 chance of one draw
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    back = transforms.hsv_to_rgb(transforms.rgb_to_hsv(rgb))
    assert np.abs(back.astype(int) - rgb).max() <= 6  # 8-bit HSV round trip (OpenCV ranges) loses little
    out = transforms.photometric_distortion(rgb, np.random.default_rng(3))
    assert out.shape == rgb.shape and out.dtype == np.uint8


# ------------------------------------------------------------------------------------------- dataset
def test_dataset_reads_synthetic_train_and_val(syn_root):
    ds = datasets.SegmentationDataset(syn_root, "train", crop_size=48, seed=0)
    assert len(ds) == SMALL["images"] and ds.num_classes == 5 and ds.class_names[1] == "aeroplane"
    s = ds[0]
    assert s["image"].shape == (3, 48, 48) and s["image"].dtype == torch.float32
    assert s["seed"].shape == (48, 48) and s["seed"].dtype == torch.int64
    assert s["labels"].shape == (5,) and s["labels"][0] == 1
    batch = datasets.collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 48, 48) and batch["seed"].shape == (3, 48, 48)
    assert batch["labels"].shape == (3, 5) and len(batch["name"]) == 3
    # Image-level labels from the JSON file (the true labels) instead of the seeds.
    ds_l = datasets.SegmentationDataset(syn_root, ["train.txt"], crop_size=48, labels=syn_root / "cls_labels.json")
    cls = json.loads((syn_root / "cls_labels.json").read_text())
    for i in range(3):
        item = ds_l[i]
        assert torch.nonzero(item["labels"]).flatten().tolist() == [0, *cls[item["name"]]]
    val = datasets.SegmentationDataset(syn_root, "val", train=False)
    v = val[0]
    gt = read_mask(syn_root / "SegmentationClass" / f"{v['name']}.png")
    assert v["gt"].shape == gt.shape == tuple(v["image"].shape[1:]) and v["gt"].dtype == torch.int64
    vb = datasets.collate([val[i] for i in range(len(val))])
    H, W = vb["image"].shape[-2:]
    assert H == int(vb["size"][:, 0].max()) and W == int(vb["size"][:, 1].max())
    # Union of lists, without duplicates.
    both = datasets.SegmentationDataset(syn_root, ["train", "val", "train.txt"], crop_size=48)
    assert len(both) == SMALL["images"] + SMALL["val_images"]


def test_dataset_bad_samples_are_reported_skipped_and_counted(syn_copy, caplog):
    root = syn_copy
    names = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    (root / "JPEGImages" / f"{names[1]}.jpg").unlink()  # missing image
    (root / "JPEGImages" / f"{names[3]}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    save_mask_png(root / "SeedMasks" / f"{names[5]}.png", np.zeros((7, 9), np.uint8))  # wrong size
    bad_val = read_mask(root / "SeedMasks" / f"{names[7]}.png").copy()
    bad_val[0, 0] = 9  # >= K (5) and not 255
    save_mask_png(root / "SeedMasks" / f"{names[7]}.png", bad_val)
    with caplog.at_level(logging.WARNING, logger="weakclip.data.datasets"):
        ds = datasets.SegmentationDataset(root, "train", crop_size=32, max_bad_fraction=0.5)
        items = [ds[i] for i in range(len(ds))]
        _ = [ds[i] for i in range(len(ds))]  # a second pass reports nothing new
    assert all(it["name"] not in {names[i] for i in (1, 3, 5, 7)} for it in items)
    assert items[1]["name"] == names[2]  # the next good sample stands in for a bad one
    reasons = dict(ds.bad_samples)
    assert sorted(reasons) == sorted(names[i] for i in (1, 3, 5, 7))
    assert f"{names[1]}.jpg" in reasons[names[1]] and "not found" in reasons[names[1]]
    assert f"{names[3]}.jpg" in reasons[names[3]] and "cannot decode" in reasons[names[3]]
    assert f"{names[5]}.png" in reasons[names[5]] and "7x9" in reasons[names[5]]
    assert f"{names[7]}.png" in reasons[names[7]] and "[9]" in reasons[names[7]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and all("\n" not in w for w in warnings)
    for i in (1, 3, 5, 7):
        assert sum(names[i] in w for w in warnings) == 1


def test_dataset_too_many_bad_samples_raise(syn_copy):
    root = syn_copy
    names = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    (root / "JPEGImages" / f"{names[2]}.jpg").write_bytes(b"garbage")
    ds = datasets.SegmentationDataset(root, "train", crop_size=32)  # default max_bad_fraction = 1 %
    with pytest.raises(RuntimeError, match=r"1 of 10 samples .*max_bad_fraction=0.01.*" + names[2]):
        for i in range(len(ds)):
            ds[i]
    (root / "JPEGImages" / f"{names[4]}.jpg").unlink()
    with pytest.raises(RuntimeError, match=r"not found"):  # missing files are found up front
        datasets.SegmentationDataset(root, "train", crop_size=32)
    with pytest.raises(FileNotFoundError, match="nosuchlist"):
        datasets.SegmentationDataset(root, "nosuchlist")


def _coco_root(tmp_path: Path, value: int) -> Path:
    root = tmp_path / "voc_format"
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (root / "JPEGImages").mkdir()
    for n in "ab":
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "JPEGImages" / f"{n}.jpg")
        m = np.zeros((16, 16), np.uint8)
        m[4:8, 4:8] = value
        m[0, :] = 255
        save_mask_png(root / "SegmentationClass" / f"{n}.png", m)
    return root


def test_coco_indexing_mismatch_is_a_clear_error(tmp_path):
    kw = dict(seed_dir="SegmentationClass", crop_size=16)
    root = _coco_root(tmp_path / "ids", 90)  # category id 90 (toothbrush)
    with pytest.raises(datasets.LabelIndexingError, match=r"a\.png.*90 > 80.*official91"):
        datasets.SegmentationDataset(root, coco_layout="contiguous81", **kw)
    ds = datasets.SegmentationDataset(root, coco_layout="official91", **kw)
    assert ds.num_classes == 81 and set(torch.unique(ds[0]["seed"]).tolist()) <= {0, 80, 255}
    assert torch.nonzero(ds[0]["labels"]).flatten().tolist() == [0, 80]
    root = _coco_root(tmp_path / "contig", 12)  # 12 is not a category id: these masks are contiguous
    with pytest.raises(datasets.LabelIndexingError, match=r"\[12\].*contiguous81"):
        datasets.SegmentationDataset(root, coco_layout="official91", **kw)
    ds = datasets.SegmentationDataset(root, coco_layout="contiguous81", **kw)
    assert torch.nonzero(ds[0]["labels"]).flatten().tolist() == [0, 12]
    with pytest.raises(ValueError, match="coco_layout must be"):
        datasets.SegmentationDataset(root, coco_layout="coco", **kw)
