"""Tensors of a TorchScript archive (OpenAI's released CLIP ``.pt`` files) read without running any code from it
(``torch.jit.load`` compiles ``code/`` and calls ``__setstate__``: a crafted file runs code).  ``data.pkl`` is
unpickled resolving only inert ``__torch__.*`` containers, tensor/storage rebuilding, ``OrderedDict`` and
``torch.jit._pickle``'s identity helpers; parameter and buffer names are read as text from ``code/``."""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import torch

from weakclip.errors import UsageError

# The storage type names TorchScript's pickler writes (``GLOBAL torch FloatStorage``) → element dtype.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}

# torch.jit._pickle helpers TorchScript writes for typed lists and containers: all return their first argument.
_JIT_PICKLE_IDENTITY = frozenset(
    {"build_intlist", "build_floatlist", "build_boollist", "build_doublelist", "build_tensorlist", "restore_type_tag"}
)

_CLASS_LINE = re.compile(r"^class\s+(\w+)\s*(?:\(([\w.]*)\))?\s*:")
_SLOT_LIST_LINE = re.compile(r"^\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")
_SETSTATE_LINE = re.compile(r"^\s+def\s+__setstate__\s*\(")


class _Refused(Exception):
    """The archive asks for something this reader does not do (the message says what)."""


class _ScriptObject:
    """An instance of a TorchScript class, kept as its qualified name and its pickled state (never executed)."""

    qualname = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE on a class: not what TorchScript writes
        raise _Refused(f"the pickle calls the TorchScript class {self.qualname}")

    def __setstate__(self, state: Any) -> None:  # BUILD: store, do not interpret
        self.__dict__["_state"] = state


@dataclass
class _StorageType:
    dtype: torch.dtype


@dataclass
class _ClassInfo:
    is_module: bool
    parameters: list[str] | None = None
    buffers: list[str] | None = None
    has_setstate: bool = False


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._zf, self._prefix = zf, prefix
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            return self._classes.setdefault(qualname, type(name, (_ScriptObject,), {"qualname": qualname}))
        # A fresh callable per GLOBAL: a BUILD opcode applied to it cannot alter a shared object.
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda *args: _rebuild_tensor(*args)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _JIT_PICKLE_IDENTITY:
            return lambda value, *_: value
        raise _Refused(f"the pickle refers to {module}.{name}, which a weights file has no reason to contain")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        """('storage', storage type, key, location, numel) → a flat tensor over ``data/<key>``."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"unknown persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise _Refused(f"malformed storage reference {str(pid)[:80]}")
        key = str(key)
        flat = self._storages.get(key)
        if flat is None:
            name = f"{self._prefix}data/{key}"
            nbytes = numel * stype.dtype.itemsize
            try:
                info = self._zf.getinfo(name)
            except KeyError:
                raise _Refused(f"storage record {name} is missing") from None
            if info.file_size != nbytes:
                raise _Refused(f"storage record {name} holds {info.file_size} bytes, expected {nbytes}")
            raw = bytearray(self._zf.read(name))
            flat = torch.frombuffer(raw, dtype=stype.dtype) if numel else torch.empty(0, dtype=stype.dtype)
            self._storages[key] = flat
        if flat.dtype != stype.dtype:
            raise _Refused(f"storage {key} is read as two dtypes")
        return flat


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """``_rebuild_tensor_v2`` with the bounds checked by ``as_strided``; requires_grad, hooks and metadata dropped."""
    if not isinstance(storage, torch.Tensor):
        raise _Refused("a tensor is rebuilt from something that is not a storage record")
    try:
        return storage.as_strided(tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset))
    except (RuntimeError, TypeError, ValueError) as e:
        raise _Refused(f"a tensor does not fit its storage ({str(e).splitlines()[0]})") from None


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a ``torch.jit.save`` zip (``<name>/code/…`` or ``<name>/constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _archive_prefix(zf: zipfile.ZipFile) -> str:
    tops = [n[: -len("data.pkl")] for n in zf.namelist() if PurePosixPath(n).name == "data.pkl" and n.count("/") == 1]
    if len(tops) != 1:
        raise _Refused("no single <name>/data.pkl record (not a TorchScript archive)")
    return tops[0]


def _class_table(zf: zipfile.ZipFile, prefix: str) -> dict[str, _ClassInfo]:
    """Qualified class name → what its TorchScript source declares, read as text from ``code/**/*.py``."""
    table: dict[str, _ClassInfo] = {}
    code = f"{prefix}code/"
    for name in zf.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code) : -len(".py")].replace("/", ".")
        current: _ClassInfo | None = None
        for line in zf.read(name).decode("utf-8", errors="replace").splitlines():
            if m := _CLASS_LINE.match(line):
                current = table[f"{module}.{m.group(1)}"] = _ClassInfo(is_module=m.group(2) == "Module")
                continue
            if line and not line[0].isspace():
                current = None
            if current is None:
                continue
            if m := _SLOT_LIST_LINE.match(line):
                try:
                    names = ast.literal_eval(m.group(2))
                except (ValueError, SyntaxError):
                    raise _Refused(f"{name}: unreadable {m.group(1)} line") from None
                setattr(current, m.group(1).strip("_"), [str(n) for n in names])
            elif _SETSTATE_LINE.match(line):
                current.has_setstate = True
    return table


def _collect(obj: _ScriptObject, prefix: str, classes: dict[str, _ClassInfo], out: dict[str, torch.Tensor]) -> None:
    info = classes.get(obj.qualname)
    if info is not None and info.has_setstate:
        raise _Refused(f"class {obj.qualname} restores its state by running its own __setstate__ code")
    state = obj.__dict__.get("_state")
    if not isinstance(state, dict):
        raise _Refused(f"class {obj.qualname} has no attribute dictionary (custom __getstate__)")
    if info is None or (info.parameters is None and info.buffers is None):
        names = [k for k, v in state.items() if isinstance(v, torch.Tensor)]  # no declaration: every tensor
    else:
        names = [*(info.parameters or []), *(info.buffers or [])]
    out.update({prefix + k: v for k in names if isinstance(v := state.get(k), torch.Tensor)})
    for k, v in state.items():
        if isinstance(v, _ScriptObject) and getattr(classes.get(v.qualname), "is_module", True):
            _collect(v, f"{prefix}{k}.", classes, out)


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.jit.load(path).state_dict()`` (same dtypes, CPU) without running code; one-line UsageError if refused."""
    where = os.fspath(path)
    try:
        with zipfile.ZipFile(where) as zf:
            prefix = _archive_prefix(zf)
            byteorder = f"{prefix}byteorder"
            if byteorder in zf.namelist() and zf.read(byteorder).decode().strip() != sys.byteorder:
                raise _Refused(f"storages are {zf.read(byteorder).decode().strip()}-endian, this machine is not")
            classes = _class_table(zf, prefix)
            root = _ArchiveUnpickler(zf.read(f"{prefix}data.pkl"), zf, prefix).load()
            if not isinstance(root, _ScriptObject):
                raise _Refused(f"data.pkl holds a {type(root).__name__}, not a TorchScript module")
            out: dict[str, torch.Tensor] = {}
            _collect(root, "", classes, out)
    except _Refused as e:
        raise UsageError(f"{where}: not loading this TorchScript archive (no code from it was run): {e}") from None
    except Exception as e:  # noqa: BLE001 - malformed pickle/zip data: nothing but the whitelisted callables ran
        raise UsageError(f"{where}: unreadable TorchScript archive ({type(e).__name__}: {e})") from None
    return out
