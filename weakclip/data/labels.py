"""Image-level label readers: ``cls_labels.npy`` (IRN/MCTformer), JSON, text, and labels derived from seed masks.

Every reader returns ``dict name -> sorted list of foreground class indices`` in K-class indexing (1-based: index 0
is background and never listed).  ``cls_labels.npy`` is a pickle (a 0-d object array holding a dict), so it is read
with :class:`RestrictedUnpickler`, which can rebuild numpy arrays, dicts, lists, strings and numbers and nothing else:
a file that asks for any other global (``os.system``, ``builtins.eval`` ...) is refused before anything runs.
"""

from __future__ import annotations

import codecs
import json
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from weakclip.data.classes import COCO_CATEGORY_IDS, COCO_OFFICIAL91_CLASSES
from weakclip.data.io import read_mask

Labels = dict[str, list[int]]


def _numpy_global(module: str, name: str) -> Any:
    """Resolve a numpy internal by its numpy-2 location, falling back to the numpy-1 one."""
    for mod in (module, module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
        try:
            obj = __import__(mod, fromlist=[name])
            return getattr(obj, name)
        except (ImportError, AttributeError):
            continue
    return None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_global("numpy._core.multiarray", "_reconstruct")
    scalar = _numpy_global("numpy._core.multiarray", "scalar")
    frombuffer = _numpy_global("numpy._core.numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        if reconstruct is not None:
            allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        if scalar is not None:
            allowed[(f"{core}.multiarray", "scalar")] = scalar
        if frombuffer is not None:
            allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    # Python-2 era pickles (protocol 2) encode raw array bytes as latin-1 text through _codecs.encode.
    allowed[("_codecs", "encode")] = codecs.encode
    for mod in ("builtins", "__builtin__"):
        for name, obj in (("dict", dict), ("list", list), ("tuple", tuple), ("float", float), ("str", str)):
            allowed[(mod, name)] = obj
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays/dtypes/scalars and builtin containers, strings and numbers.

    Any other global named by the pickle raises :class:`pickle.UnpicklingError` *before* it is imported or called.
    """

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        obj = self._ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays, dicts, lists, strings and numbers "
                "are allowed in this file"
            )
        return obj


def restricted_load_npy(path: str | os.PathLike) -> Any:
    """Read a ``.npy`` file; object arrays (pickles) go through :class:`RestrictedUnpickler`, never ``allow_pickle``.

    A 0-d object array (what ``np.save(path, some_dict)`` writes) is returned as the object itself.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            if not dtype.hasobject:
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
    for i in out:
        if i < 1 or (num_classes is not None and i >= num_classes):
            hi = f"{num_classes - 1}" if num_classes is not None else "K-1"
            raise ValueError(
                f"{path}: image {name!r} has class index {i}; labels are 1-based foreground indices in 1..{hi} "
                "(0 is background)"
            )
    return out


def read_cls_labels_npy(path: str | os.PathLike, num_classes: int | None = None) -> Labels:
    """Read an IRN/MCTformer ``cls_labels.npy``: dict name -> (K-1)-dim multi-hot over the foreground classes.

    The multi-hot vector's entry j is foreground class j+1 in K-class indexing.  ``num_classes`` (K), if given,
    must equal the vector length + 1, with one exception: MCTformer's COCO file holds 80-dim vectors (the 80 COCO
    categories in category-id order); read with K = 91 (the official 91 category-id slots) entry j becomes class
    ``COCO_CATEGORY_IDS[j]``, the slot of that category.
    """
    path = Path(path)
    obj = restricted_load_npy(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict name -> multi-hot array, got {type(obj).__name__}")
    out: Labels = {}
    for name, vec in obj.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: keys must be image names (str), got {type(name).__name__} {name!r}")
        v = np.asarray(vec, dtype=np.float64).reshape(-1)
        if num_classes == len(COCO_OFFICIAL91_CLASSES) and v.size == len(COCO_CATEGORY_IDS):
            out[name] = [COCO_CATEGORY_IDS[int(i)] for i in np.flatnonzero(v > 0.5)]
            continue
        if num_classes is not None and v.size != num_classes - 1:
            raise ValueError(
                f"{path}: image {name!r} has a {v.size}-dim label vector; expected {num_classes - 1} "
                f"(K-1 foreground classes for K={num_classes})"
            )
        out[name] = [int(i) + 1 for i in np.flatnonzero(v > 0.5)]
    return out


def read_labels_json(path: str | os.PathLike, num_classes: int | None = None) -> Labels:
    """Read a JSON object ``{name: [class index, ...]}`` (1-based foreground indices)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot parse JSON labels ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object name -> list of class indices")
    out: Labels = {}
    for name, idx in obj.items():
        if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise ValueError(f"{path}: image {name!r}: expected a list of integer class indices, got {idx!r}")
        out[name] = _check_indices(path, name, idx, num_classes)
    return out


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
            raise ValueError(
                f"{path}:{lineno}: expected 'name idx idx ...' with integer indices, got {line!r}"
            ) from None
        out[parts[0]] = _check_indices(path, parts[0], idx, num_classes)
    return out


def labels_from_mask(mask: np.ndarray) -> list[int]:
    """Foreground classes present in a label mask (H, W): unique values except 0 (background) and 255 (ignore)."""
    vals = np.unique(np.asarray(mask))
    return [int(v) for v in vals if v != 0 and v != 255]


def labels_from_seed_dir(seed_dir: str | os.PathLike, names: Iterable[str], suffix: str = ".png") -> Labels:
    """Derive labels for ``names`` from the seed masks ``seed_dir/<name><suffix>``."""
    seed_dir = Path(seed_dir)
    return {n: labels_from_mask(read_mask(seed_dir / f"{n}{suffix}")) for n in names}


def load_labels(path: str | os.PathLike, num_classes: int | None = None) -> Labels:
    """Read an image-level label file, choosing the reader by suffix (``.npy``, ``.json``, anything else = text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return read_cls_labels_npy(path, num_classes)
    if suffix == ".json":
        return read_labels_json(path, num_classes)
    return read_labels_txt(path, num_classes)


def multi_hot(indices: Iterable[int], num_classes: int) -> np.ndarray:
    """(K,) float32 multi-hot with background (index 0) always 1."""
    v = np.zeros(num_classes, dtype=np.float32)
    v[0] = 1.0
    for i in indices:
        v[int(i)] = 1.0
    return v
