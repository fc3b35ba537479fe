"""Synthetic VOC-layout dataset: textured shapes, GT masks, CAM-like degraded seeds and image-level labels.

Each foreground class has its own colour + texture family, jittered per image so it is learnable but not trivial; the
seeds are damaged randomly per image, so a network trained on many images can beat them.  Image i of a split depends
only on (seed, split, i)."""

from __future__ import annotations

import colorsys
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from weakclip.data.classes import VOC_CLASSES
from weakclip.data.io import atomic_path, save_mask_png, write_text_atomic
from weakclip.data.metrics import confusion, metrics_from_matrix
from weakclip.errors import UsageError
from weakclip.progress import progress

IGNORE = 255
TEXTURES = ("stripes", "checker", "dots", "rings", "waves", "blotches")


@dataclass
class ClassStyle:
    texture: str  # one of TEXTURES
    hue: float  # base hue in [0, 1)
    sat: float  # base saturation
    val: float  # base value (brightness)
    hue2: float  # hue offset of the secondary texture colour
    dark: float  # value factor of the secondary colour
    period: float  # texture period in pixels at a 160-pixel short side
    angle: float  # texture orientation in radians


def make_class_styles(num_fg: int, rng: np.random.Generator) -> list[ClassStyle]:
    """One distinct colour + texture family per foreground class (evenly spaced hues, cycling textures)."""
    offset, tex = rng.random(), [TEXTURES[t] for t in rng.permutation(len(TEXTURES))]
    ranges = ((0.55, 0.9), (0.55, 0.95), (-0.08, 0.08), (0.35, 0.7), (6.0, 16.0), (0, np.pi))  # sat .. angle
    return [
        ClassStyle(tex[c % len(tex)], (offset + c / num_fg) % 1.0, *(float(rng.uniform(*r)) for r in ranges))
        for c in range(num_fg)
    ]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))) * 255.0


def _smooth_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in [0, 1] of shape (H, W): a small random grid upsampled bilinearly."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    img = Image.fromarray(grid, mode="L").resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _pattern(kind: str, yy: np.ndarray, xx: np.ndarray, period: float, angle: float, rng: np.random.Generator):
    """Texture pattern in [0, 1] over pixel coordinates (h, w)."""
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase)
    if kind == "checker":
        return ((np.floor(u / period + phase) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        fu, fv = (u / period + phase) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        return (fu * fu + fv * fv < 0.09).astype(np.float32)
    if kind == "rings":
        r = np.sqrt((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2)
        return 0.5 + 0.5 * np.sin(2 * np.pi * r / period + phase)
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(2 * np.pi * (u + 0.35 * period * np.sin(2 * np.pi * v / (2.5 * period))) / period)
    # blotches: thresholded smooth noise
    h, w = yy.shape
    cells = max(3, int(max(h, w) / period) + 2)
    return (_smooth_noise(rng, (h, w), cells) > 0.5).astype(np.float32)


def _random_shape(rng: np.random.Generator, hw: tuple[int, int]) -> dict:
    h, w = hw
    kind = ("ellipse", "rect", "polygon")[int(rng.integers(3))]
    r = min(h, w) * float(rng.uniform(0.1, 0.32))
    aspect = float(rng.uniform(0.6, 1.5))
    ry, rx = r * np.sqrt(aspect), r / np.sqrt(aspect)
    cy, cx = float(rng.uniform(0.15, 0.85) * h), float(rng.uniform(0.15, 0.85) * w)
    angle = float(rng.uniform(0, np.pi))
    if kind == "rect":
        pts = np.array([[-ry, -rx], [-ry, rx], [ry, rx], [ry, -rx]])
    else:  # an ellipse: 40 even angles; a polygon: 5..8 random angles and radii
        ellipse = kind == "ellipse"
        n = 40 if ellipse else int(rng.integers(5, 9))
        t = np.linspace(0, 2 * np.pi, n, endpoint=False) if ellipse else np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = np.ones(n) if ellipse else rng.uniform(0.6, 1.0, n)
        pts = np.stack([ry * rad * np.sin(t), rx * rad * np.cos(t)], 1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return {"center": np.array([cy, cx]), "offsets": pts @ rot.T, "radius": r}


def _draw(hw: tuple[int, int], polygon: np.ndarray | None = None, discs: Iterable = ()) -> np.ndarray:
    """(H, W) bool of a polygon ((n, 2) points as (y, x)) and/or discs ((cy, cx), r)."""
    img = Image.new("L", (hw[1], hw[0]), 0)
    draw = ImageDraw.Draw(img)
    if polygon is not None:
        draw.polygon([(float(x), float(y)) for y, x in polygon], fill=1)
    for (cy, cx), r in discs:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    return np.asarray(img, dtype=bool)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _label_borders(gt: np.ndarray) -> np.ndarray:
    """Pixels that touch (4-neighbourhood) a pixel of another label: a ~2-pixel band on every object outline."""
    diff = np.zeros(gt.shape, dtype=bool)
    for g, out in ((gt, diff), (gt.T, diff.T)):  # rows, then columns (diff.T is a view)
        d = g[1:] != g[:-1]
        out[1:] |= d
        out[:-1] |= d
    return diff


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    c1, c2 = (_hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.85)) for _ in range(2))
    mix = _smooth_noise(rng, hw, int(rng.integers(3, 7)))[..., None]
    img = c1 * mix + c2 * (1 - mix)
    if rng.random() < 0.5:  # faint background texture
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        pat = _pattern(kind, yy, xx, float(rng.uniform(5, 20)) * min(h, w) / 160, float(rng.uniform(0, np.pi)), rng)
        img = img * (1 + 0.15 * (pat[..., None] - 0.5))
    return img


def make_sample(
    rng: np.random.Generator, hw: tuple[int, int], styles: list[ClassStyle]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic sample: image (H, W, 3) uint8, GT (H, W) uint8 with 255 borders, seed (H, W) uint8."""
    h, w = hw
    num_fg = len(styles)
    img = _background(rng, hw)
    gt = np.zeros(hw, dtype=np.uint8)
    n_obj = int(rng.integers(1, 4))
    classes = rng.choice(num_fg, size=n_obj, replace=n_obj > num_fg) + 1
    shapes = []
    for cls in classes:
        st = styles[cls - 1]
        shape = _random_shape(rng, hw)
        mask = _draw(hw, shape["center"] + shape["offsets"])
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        period = st.period * (min(h, w) / 160.0) * float(rng.uniform(0.8, 1.25))
        pat = _pattern(st.texture, yy, xx, period, st.angle + float(rng.uniform(-0.45, 0.45)), rng)[..., None]
        hue = st.hue + float(rng.uniform(-0.03, 0.03))
        sat = st.sat + float(rng.uniform(-0.1, 0.1))
        val = st.val + float(rng.uniform(-0.12, 0.12))
        g = rng.uniform(-0.25, 0.25, 2)  # shading gradient across the object
        shade = 1 + g[0] * (yy - yy.mean()) / max(y1 - y0, 1) + g[1] * (xx - xx.mean()) / max(x1 - x0, 1)
        tex = (_hsv(hue, sat, val) * pat + _hsv(hue + st.hue2, sat * 0.8, val * st.dark) * (1 - pat)) * shade[..., None]
        m = mask[y0:y1, x0:x1]
        img[y0:y1, x0:x1][m] = tex[m]
        gt[mask] = cls
        shapes.append((int(cls), shape))
    img = img + rng.normal(0, rng.uniform(3, 9), img.shape)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    seed = _degrade(rng, hw, gt, shapes, num_fg)
    gt[_label_borders(gt)] = IGNORE
    return image, gt, seed


def _degrade(
    rng: np.random.Generator, hw: tuple[int, int], gt: np.ndarray, shapes: list[tuple[int, dict]], num_fg: int
) -> np.ndarray:
    """CAM-like seeds from the GT objects: cores around a "discriminative" point, spills, shifted boundaries, missed
    small objects, class confusion, 255 patches."""
    h, w = hw
    seed = np.zeros(hw, dtype=np.uint8)
    uncertain = np.zeros(hw, dtype=bool)
    for cls, shape in shapes:
        area = (gt == cls).mean()
        if area == 0 or rng.random() < (0.6 if area < 0.015 else 0.08):
            continue  # missed object: stays background in the seeds
        r, offsets = shape["radius"], shape["offsets"]
        core_scale = float(rng.uniform(0.55, 0.95))  # an under-segmented core around an off-centre point
        region = _draw(hw, shape["center"] + rng.uniform(-0.3, 0.3, 2) * r + offsets * core_scale)
        n_spill = int(rng.integers(0, 4))  # blobby spills across the outline
        if n_spill:
            idx = rng.integers(0, len(offsets), n_spill)
            centers = [shape["center"] + offsets[i] * rng.uniform(0.75, 1.1) for i in idx]
            region |= _draw(hw, discs=zip(centers, rng.uniform(0.15, 0.4, n_spill) * r))
        dy, dx = (rng.uniform(-0.15, 0.15, 2) * r).astype(int)
        region = _shift(region, int(dy), int(dx))  # shifted boundaries
        if rng.random() < 0.05 and num_fg > 1:  # class confusion
            cls = int(rng.choice([c for c in range(1, num_fg + 1) if c != cls]))
        seed[region] = cls
        if rng.random() < 0.4:  # uncertain patches on the outline
            n_u = int(rng.integers(1, 3))
            centers = shape["center"] + offsets[rng.integers(0, len(offsets), n_u)]
            uncertain |= _draw(hw, discs=zip(centers, rng.uniform(0.1, 0.25, n_u) * r))
    if shapes and rng.random() < 0.15:  # context false positive: a present class fires on background
        cls = shapes[int(rng.integers(len(shapes)))][0]
        fp = _draw(hw, discs=[((rng.uniform(0, h), rng.uniform(0, w)), rng.uniform(0.05, 0.12) * min(h, w))])
        seed[fp & (seed == 0)] = cls
    if rng.random() < 0.2:  # an uncertain background patch
        uncertain |= _draw(hw, discs=[((rng.uniform(0, h), rng.uniform(0, w)), rng.uniform(0.05, 0.1) * min(h, w))])
    seed[uncertain] = IGNORE
    return seed


# What make_synthetic_dataset writes under ``out``; ``--overwrite`` deletes these (and temporaries), nothing else.
SAMPLE_DIRS = ("JPEGImages", "SegmentationClass", "SeedMasks")
SAMPLE_NAME = re.compile(r"(train|val)_\d{6}\.(jpg|png)")
LISTS = ("ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt")
LAYOUT_FILES = (*LISTS, "cls_labels.json", "class_names.txt", "synthetic_meta.json")


def dataset_files(out: str | os.PathLike) -> list[Path]:
    """The files of a synthetic dataset present under ``out`` (and temporaries of a killed write), sorted."""
    out = Path(out)
    found = [out / f for f in LAYOUT_FILES if (out / f).is_file()]
    for folder in (out, out / "ImageSets" / "Segmentation", *(out / d for d in SAMPLE_DIRS)):
        if folder.is_dir():
            for p in folder.iterdir():
                temp = p.name.startswith(".") and ".tmp" in p.name
                if p.is_file() and (temp or (folder.name in SAMPLE_DIRS and SAMPLE_NAME.fullmatch(p.name))):
                    found.append(p)
    return sorted(set(found))


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder unless ``overwrite`` (UsageError naming ``--out``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; expected a folder")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() and not overwrite else []
    if not present:
        return
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    what = "already holds a synthetic dataset" if dataset_files(out) else "is not empty"
    raise UsageError(
        f"--out {out}: {what} ({shown}); choose a new or empty folder, or pass --overwrite to write the set again "
        "(deletes only the files this program writes there)"
    )


def clear_dataset(out: str | os.PathLike) -> list[Path]:
    """Delete :func:`dataset_files` and the layout folders they leave empty; return the deleted files."""
    out = Path(out)
    files = dataset_files(out)
    for p in files:
        p.unlink()
    for folder in (*(out / d for d in SAMPLE_DIRS), out / "ImageSets" / "Segmentation", out / "ImageSets"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return files


def make_synthetic_dataset(
    out: str | os.PathLike,
    images: int,
    seed: int,
    num_fg: int = 5,
    size: tuple[int, int] = (160, 160),
    val_images: int | None = None,
    max_size: tuple[int, int] | None = None,
    jpeg_quality: int = 92,
    show_progress: bool = False,
) -> dict:
    """Write ``images`` training and ``val_images`` validation images (``size`` .. ``max_size``) with their masks, lists
    and labels under ``out`` (K = num_fg + 1 classes named by the first VOC classes); return a summary."""
    if not 1 <= num_fg <= len(VOC_CLASSES) - 1:
        raise ValueError(f"num_fg must be in 1..{len(VOC_CLASSES) - 1} (named by VOC classes), got {num_fg}")
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    val_images = max(1, images // 4) if val_images is None else val_images
    lo = tuple(int(s) for s in size)
    hi = lo if max_size is None else tuple(int(s) for s in max_size)
    if min(lo) < 16 or hi[0] < lo[0] or hi[1] < lo[1]:
        raise ValueError(f"invalid sizes: size={lo} max_size={hi} (need >= 16 and max_size >= size)")
    t0 = time.perf_counter()
    out = Path(out)
    K = num_fg + 1
    class_names = list(VOC_CLASSES[:K])
    styles = make_class_styles(num_fg, np.random.default_rng([seed, 7777]))
    labels: dict[str, list[int]] = {}
    conf: dict[str, np.ndarray | int] = {"train": 0, "val": 0}  # confusion counts summed over the split
    bar = progress(total=images + val_images, desc="synthetic", unit="img", disable=not show_progress)
    for split_id, (split, n) in enumerate((("train", images), ("val", val_images))):
        names = [f"{split}_{i:06d}" for i in range(n)]
        for i, name in enumerate(names):
            rng = np.random.default_rng([seed, split_id, i])
            hw = (int(rng.integers(lo[0], hi[0] + 1)), int(rng.integers(lo[1], hi[1] + 1)))
            image, gt, seed_mask = make_sample(rng, hw, styles)
            with atomic_path(out / "JPEGImages" / f"{name}.jpg") as tmp:
                Image.fromarray(image).save(tmp, format="JPEG", quality=jpeg_quality)
            save_mask_png(out / "SegmentationClass" / f"{name}.png", gt)
            save_mask_png(out / "SeedMasks" / f"{name}.png", seed_mask)
            labels[name] = [int(v) for v in np.unique(gt) if v not in (0, IGNORE)]
            conf[split] = conf[split] + confusion(seed_mask, gt, K)  # 255 in the seeds counts as a miss
            bar.update(1)
        write_text_atomic(out / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{n}\n" for n in names))
    bar.close()
    write_text_atomic(out / "cls_labels.json", json.dumps(labels, indent=0, sort_keys=True) + "\n")
    write_text_atomic(out / "class_names.txt", "".join(f"{c}\n" for c in class_names))
    train_scores = metrics_from_matrix(np.asarray(conf["train"]))
    meta = dict(seed=seed, num_classes=K, class_names=class_names, train_images=images, val_images=val_images)
    meta |= dict(size=list(lo), max_size=list(hi), seed_miou=train_scores.miou)
    meta["seed_miou_val"] = metrics_from_matrix(np.asarray(conf["val"])).miou if val_images else float("nan")
    meta["seed_iou_per_class"] = {c: round(float(v), 4) for c, v in zip(class_names, train_scores.iou)}
    write_text_atomic(out / "synthetic_meta.json", json.dumps(meta, indent=2) + "\n")  # no absolute path: same bytes
    return {"out": str(out), **meta, "seconds": time.perf_counter() - t0}
