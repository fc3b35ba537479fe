"""Image-level label readers (``cls_labels.npy`` through :class:`RestrictedUnpickler`, JSON, text, seed masks), each
returning ``dict name -> sorted list of 1-based foreground class indices`` (background 0 is never listed)."""

from __future__ import annotations

import codecs
import contextlib
import importlib
import json
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from weakclip.data.classes import COCO_CATEGORY_IDS, COCO_OFFICIAL91_CLASSES
from weakclip.data.io import reading

Labels = dict[str, list[int]]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")):
        for found_in in ("numpy._core", "numpy.core"):  # numpy 2, then numpy 1; pickles name either
            with contextlib.suppress(ImportError, AttributeError):
                obj = getattr(importlib.import_module(f"{found_in}.{module}"), name)
                allowed |= {(f"{core}.{module}", name): obj for core in ("numpy.core", "numpy._core")}
                break
    # Python-2 era pickles (protocol 2) encode raw array bytes as latin-1 text through _codecs.encode.
    allowed[("_codecs", "encode")] = codecs.encode
    allowed |= {(mod, t.__name__): t for mod in ("builtins", "__builtin__") for t in (dict, list, tuple, float, str)}
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays/dtypes/scalars and builtin containers, strings and numbers; any
    other global raises :class:`pickle.UnpicklingError` *before* it is imported or called."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        obj = self._ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays, dicts, lists, strings and numbers "
                "are allowed in this file"
            )
        return obj


def npy_dtype(f: BinaryIO) -> np.dtype:
    """The dtype in the header of the open ``.npy`` file ``f`` (left just past the header)."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)[2]


def restricted_load_npy(path: str | os.PathLike) -> Any:
    """Read a ``.npy`` file; object arrays (pickles) go through :class:`RestrictedUnpickler`, never ``allow_pickle``.
    A 0-d object array (what ``np.save(path, some_dict)`` writes) is returned as the object itself."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if not npy_dtype(f).hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            # Old (Python-2) pickles need encoding="latin1" to rebuild numpy's raw byte strings.
            arr = RestrictedUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: {e}") from None
    except (OSError, ValueError, EOFError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: cannot read .npy file ({e})") from None
    if isinstance(arr, np.ndarray) and arr.dtype.hasobject and arr.shape == ():
        return arr.item()
    return arr


def _check_indices(path: Path, name: str, idx: Iterable[int], num_classes: int | None) -> list[int]:
    out = sorted({int(i) for i in idx})
    top = "K-1" if num_classes is None else num_classes - 1
    if bad := [i for i in out if i < 1 or (num_classes is not None and i >= num_classes)]:
        raise ValueError(
            f"{path}: image {name!r} has class index {bad[0]}; labels are 1-based foreground indices in 1..{top} "
            "(0 is background)"
        )
    return out


def read_cls_labels_npy(path: str | os.PathLike, num_classes: int | None = None) -> Labels:
    """Read an IRN/MCTformer ``cls_labels.npy``: dict name -> (K-1)-dim multi-hot, entry j = class j+1.
    ``num_classes`` (K), if given, must be the vector length + 1, except that MCTformer's COCO file (80-dim vectors in
    category-id order) read with K = 91 (the official category-id slots) maps entry j to ``COCO_CATEGORY_IDS[j]``."""
    path = Path(path)
    obj = restricted_load_npy(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict name -> multi-hot array, got {type(obj).__name__}")
    out: Labels = {}
    for name, vec in obj.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: keys must be image names (str), got {type(name).__name__} {name!r}")
        v = np.asarray(vec, dtype=np.float64).reshape(-1)
        coco = num_classes == len(COCO_OFFICIAL91_CLASSES) and v.size == len(COCO_CATEGORY_IDS)
        if not coco and num_classes is not None and v.size != num_classes - 1:
            raise ValueError(
                f"{path}: image {name!r} has a {v.size}-dim label vector; expected {num_classes - 1} "
                f"(K-1 foreground classes for K={num_classes})"
            )
        out[name] = [COCO_CATEGORY_IDS[i] if coco else i + 1 for i in np.flatnonzero(v > 0.5).tolist()]
    return out


def read_labels_json(path: str | os.PathLike, num_classes: int | None = None) -> Labels:
    """Read a JSON object ``{name: [class index, ...]}`` (1-based foreground indices)."""
    path = Path(path)
    with reading(path, "cannot parse JSON labels"):
        obj = json.loads(path.read_text())
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object name -> list of class indices")
    for name, idx in obj.items():
        if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise ValueError(f"{path}: image {name!r}: expected a list of integer class indices, got {idx!r}")
    return {name: _check_indices(path, name, idx, num_classes) for name, idx in obj.items()}


def read_labels_txt(path: str | os.PathLike, num_classes: int | None = None) -> Labels:
    """Read a text file with one ``name idx idx ...`` line per image (1-based foreground indices; blank lines skip)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    out: Labels = {}
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            idx = [int(p) for p in parts[1:]]
        except ValueError:
            expected = "expected 'name idx idx ...' with integer indices"
            raise ValueError(f"{path}:{lineno}: {expected}, got {line!r}") from None
        out[parts[0]] = _check_indices(path, parts[0], idx, num_classes)
    return out


def labels_from_mask(mask: np.ndarray) -> list[int]:
    """Foreground classes present in a label mask (H, W): unique values except 0 (background) and 255 (ignore)."""
    return [int(v) for v in np.unique(np.asarray(mask)) if v != 0 and v != 255]


def load_labels(path: str | os.PathLike, num_classes: int | None = None) -> Labels:
    """Read an image-level label file, choosing the reader by suffix (``.npy``, ``.json``, anything else = text)."""
    readers = {".npy": read_cls_labels_npy, ".json": read_labels_json}
    return readers.get(Path(path).suffix.lower(), read_labels_txt)(Path(path), num_classes)


def multi_hot(indices: Iterable[int], num_classes: int) -> np.ndarray:
    """(K,) float32 multi-hot with background (index 0) always 1."""
    v = np.zeros(num_classes, dtype=np.float32)
    v[[0, *map(int, indices)]] = 1.0
    return v
