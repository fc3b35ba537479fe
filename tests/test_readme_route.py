"""README "From a real dataset to masks", run as written: every command of the section's ```bash blocks, read from
README.md at test time, runs through the `weakclip` console script of this environment in a scratch folder that
holds tiny datasets in the exact official layouts (hustvl/WeakCLIP docs/prepare_dataset.md) and tiny checkpoints in
the official mmseg key layout:

    data/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug, SegmentationClassAugPseudoMaskMCT,
                            ImageSets/Segmentation/{train,trainaug,val}.txt, cls_labels.npy}
    data/COCO14/{images, voc_format/{class_labels, cocoPGTMCT, train.txt, val.txt, val_5000.txt}, cls_labels.npy}
    weakclip_voc.pth (21 classes), weakclip_coco.pth (91 classes)

The README's paths are used unchanged (the datasets and checkpoints lie where it says).  The one substitution:
`weakclip train` lines (step 5) get TRAIN_OVERRIDES appended (tiny model, no CLIP download, two iterations).
Each command must exit 0; the outputs each step promises are checked afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_convert_official import official_state_dict

from weakclip.data.classes import COCO_OFFICIAL91_CLASSES, VOC_CLASSES
from weakclip.data.io import save_mask_png

REPO = Path(__file__).resolve().parents[1]
SECTION = "## From a real dataset to masks"
TRAIN_OVERRIDES = [
    "model.preset=tiny",
    "model.clip_weights=null",
    "train.iters=2",
    "train.batch_size=2",
    "train.amp=false",
    "data.num_workers=0",
    "device=cpu",
    "schedule.val_max_images=1",
]

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_TRAINAUG = ["2007_000032", "2008_000002", "2008_000003"]  # overlaps train.txt, as the official lists do
VOC_VAL = ["2007_000033"]
COCO_TRAIN = ["000000000009", "000000000025"]
COCO_VAL = ["000000000139"]


def readme_commands(readme: Path = REPO / "README.md") -> list[list[str]]:
    """argv of every command in the section's ```bash blocks (backslash continuations joined, comments dropped)."""
    text = readme.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```bash\n(.*?)```", text[start : end if end > 0 else None], flags=re.S)
    assert blocks, f"no ```bash block in README section {SECTION!r}"
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                assert not re.search(r"[|;&<>`$]", line), f"README command needs a shell: {line}"
                commands.append(shlex.split(line))
    return commands


def _image(rng: np.random.Generator, h: int, w: int, boxes: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    img = rng.integers(60, 120, size=(h, w, 3), dtype=np.uint8)
    for cls, y0, x0, y1, x1 in boxes:
        img[y0:y1, x0:x1] = (40 * cls) % 256, (255 - 30 * cls) % 256, (90 + 20 * cls) % 256
    return img


def _write_sample(rng, name: str, image_dir: Path, mask_dirs: list[Path], classes: list[int]) -> list[int]:
    h, w = (64, 96) if int(rng.integers(2)) else (80, 64)
    boxes = []
    for i, cls in enumerate(classes):
        y0, x0 = 4 + 10 * i, 6 + 12 * i
        boxes.append((cls, y0, x0, min(h, y0 + h // 2), min(w, x0 + w // 2)))
    image_dir.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(image_dir / f"{name}.jpg"), _image(rng, h, w, boxes)[..., ::-1])
    mask = np.zeros((h, w), np.uint8)
    for cls, y0, x0, y1, x1 in boxes:
        mask[y0:y1, x0:x1] = cls
    mask[0, :] = 255  # an ignored border row, as in VOC's GT
    for d in mask_dirs:
        save_mask_png(d / f"{name}.png", mask)
    return classes


def _cls_labels(path: Path, labels: dict[str, list[int]], dim: int, index) -> None:
    """MCTformer's cls_labels.npy: np.save of a dict name → float multi-hot over the foreground classes."""
    out = {}
    for name, classes in labels.items():
        v = np.zeros(dim, np.float32)
        for c in classes:
            v[index(c)] = 1.0
        out[name] = v
    np.save(path, out, allow_pickle=True)


def make_voc(root: Path, seed: int = 0) -> None:
    """A tiny VOC 2012 + SBD in the official layout (docs/prepare_dataset.md), with MCTformer-format labels."""
    rng = np.random.default_rng(seed)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    labels = {}
    train = list(dict.fromkeys(VOC_TRAIN + VOC_TRAINAUG))
    for n in [*train, *VOC_VAL]:
        gt = [root / "SegmentationClassAug"]
        if n in VOC_TRAIN or n in VOC_VAL:
            gt.append(root / "SegmentationClass")  # the VOC tar's GT: train + val; SBD's Aug covers all
        seeds = [root / "SegmentationClassAugPseudoMaskMCT"] if n in train else []
        classes = sorted({int(c) for c in rng.choice(np.arange(1, 21), size=2, replace=False)})
        labels[n] = _write_sample(rng, n, root / "JPEGImages", gt + seeds, classes)
    for fname, names in (("train.txt", VOC_TRAIN), ("trainaug.txt", VOC_TRAINAUG), ("val.txt", VOC_VAL)):
        (lists / fname).write_text("".join(f"{n}\n" for n in names))
    _cls_labels(root / "cls_labels.npy", labels, 20, lambda c: c - 1)


def make_coco(root: Path, seed: int = 1) -> None:
    """A tiny COCO 2014 in the official layout (data/COCO14: images/, voc_format/...), MCTformer-format labels
    (80-dim vectors in category-id order).  Mask values 1..3 (person, bicycle, car) read the same in the 81
    contiguous and the 91 category-id indexings."""
    rng = np.random.default_rng(seed)
    vf = root / "voc_format"
    vf.mkdir(parents=True)
    labels = {}
    for n in [*COCO_TRAIN, *COCO_VAL]:
        seeds = [vf / "cocoPGTMCT"] if n in COCO_TRAIN else []
        classes = sorted({int(c) for c in rng.choice([1, 2, 3], size=2, replace=False)})
        labels[n] = _write_sample(rng, n, root / "images", [vf / "class_labels", *seeds], classes)
    (vf / "train.txt").write_text("".join(f"{n}\n" for n in COCO_TRAIN))
    for fname in ("val.txt", "val_5000.txt"):
        (vf / fname).write_text("".join(f"{n}\n" for n in COCO_VAL))
    _cls_labels(root / "cls_labels.npy", labels, 80, lambda c: c - 1)  # ids 1..3 are the first three categories


def make_official_checkpoint(path: Path, class_names, seed: int) -> None:
    """An official-layout mmseg checkpoint (tiny widths; tests/test_convert_official.py builds the state dict)."""
    sd = official_state_dict(seed=seed, class_names=class_names)
    torch.save({"meta": {"CLASSES": list(class_names)}, "state_dict": sd}, path)


@pytest.fixture
def route_dir(tmp_path):
    make_voc(tmp_path / "data" / "VOCdevkit" / "VOC2012")
    make_coco(tmp_path / "data" / "COCO14")
    make_official_checkpoint(tmp_path / "weakclip_voc.pth", VOC_CLASSES, 0)
    make_official_checkpoint(tmp_path / "weakclip_coco.pth", COCO_OFFICIAL91_CLASSES, 1)
    return tmp_path


def test_readme_commands_are_plain_weakclip_commands():
    commands = readme_commands()
    assert commands and all(argv[0] == "weakclip" for argv in commands), [c[0] for c in commands]
    subs = [argv[1] for argv in commands]
    for sub in ("check-data", "convert", "generate", "export", "evaluate", "train"):
        assert sub in subs, f"the README route has no `weakclip {sub}` step"


def test_readme_route_runs_verbatim(route_dir):
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "weakclip").is_file(), f"no weakclip console script in {bin_dir}"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    outputs = {}
    for argv in readme_commands():
        run = argv + TRAIN_OVERRIDES if argv[1] == "train" else argv  # the one substitution (module docstring)
        proc = subprocess.run(run, cwd=route_dir, env=env, capture_output=True, text=True, timeout=600)
        shown = " ".join(run)
        assert proc.returncode == 0, f"{shown}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs[shown] = proc.stdout
    checks = [out for cmd, out in outputs.items() if " check-data " in f" {cmd} "]
    assert len(checks) == 2 and all("OK: nothing here would fail" in out for out in checks)
    assert "layout from config voc_vit_b16" in checks[0] and "list trainaug.txt: 3 names" in checks[0]
    assert "layout from --config coco_vit_b16" in checks[1] and "list train.txt: 2 names" in checks[1]
    assert "labels: 3 images in data/COCO14/cls_labels.npy" in checks[1]

    r = route_dir
    assert (r / "runs/official_voc.safetensors").is_file() and (r / "runs/official_coco.safetensors").is_file()
    assert sorted(p.stem for p in (r / "masks/voc_trainaug").glob("*.png")) == sorted(VOC_TRAINAUG)
    assert sorted(p.stem for p in (r / "masks/coco_train").glob("*.png")) == sorted(COCO_TRAIN)
    assert sorted(p.stem for p in (r / "masks/voc_train_cpu").glob("*.png")) == sorted(VOC_TRAIN)
    assert (r / "runs/official_voc_onnx/weakclip_int8.onnx").is_file()
    assert (r / "masks/voc_iou.png").is_file() and (r / "masks/coco_iou.png").is_file()
    evals = [out for cmd, out in outputs.items() if " evaluate " in f" {cmd} "]
    assert len(evals) == 3 and all("mIoU" in out for out in evals)
    assert (r / "runs/voc/final.safetensors").is_file() and (r / "runs/coco/final.safetensors").is_file()
