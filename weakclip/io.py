"""Small file helpers shared by data, generation and evaluation: palette PNGs and atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


def voc_palette(n: int = 256) -> list[int]:
    """The standard PASCAL VOC colour map as a flat [r, g, b, ...] list of length 3·n (index 255 is (224, 224, 192))."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` only if the block succeeds.

    A reader never sees a half-written ``path``: it is either absent, the old file, or the complete new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_mask_png(path: str | os.PathLike, mask: np.ndarray, palette: bool = True) -> None:
    """Write an (H, W) uint8 label mask atomically as a PNG (palette mode with the VOC colours, or plain L)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D (H, W), got shape {mask.shape}")
    img = Image.fromarray(mask.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        img.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette indices or L) as an (H, W) uint8 array; a clear error names the file otherwise."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(f"mode {img.mode} is not a label image (expected palette or grayscale)")
            return np.asarray(img, dtype=np.uint8) if img.mode in ("P", "L") else np.asarray(img).astype(np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read label mask ({e})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB; corrupt, truncated or empty files raise ValueError naming the file."""
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("file is empty (0 bytes)")
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot decode image ({e})") from None
