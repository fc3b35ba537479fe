"""Tensors of a TorchScript archive (OpenAI's released CLIP ``.pt`` files) read without running any code from it.

``torch.jit.load`` executes the archive: it compiles the TorchScript in ``code/`` and calls every class's
``__setstate__``, so a crafted file can write files or run ops while it is being loaded.  This reader never does:

* The archive is a zip with one top folder ``<name>/``: ``data.pkl`` (the module tree, pickled), ``data/<key>``
  (raw little-endian storages), ``code/__torch__/…/<module>.py`` (TorchScript source), ``constants.pkl``,
  ``version``.  OpenAI's files have exactly this layout (``ViT-B-16/data.pkl``, ``ViT-B-16/data/0…N``, …).
* ``data.pkl`` is read by a restricted unpickler that resolves only these globals: ``__torch__.*`` classes (each
  becomes an inert attribute container), ``torch._utils._rebuild_tensor_v2`` (a tensor rebuilt here from its storage
  record), the ``torch.<Type>Storage`` names (a dtype), ``collections.OrderedDict`` and the list/type-tag helpers of
  ``torch.jit._pickle`` (identity functions).  Any other global (``os.system``, ``builtins.exec``, …) is refused.
* Which attributes are parameters and buffers is read from the ``__parameters__ = [...]`` and ``__buffers__ =
  [...]`` lines of the class definitions in ``code/`` (text matching and ``ast.literal_eval``, never executed).
* A class that defines ``__setstate__`` restores its state with code, so its state cannot be known without running
  it: such an archive is refused.

The result has the names and values of ``torch.jit.load(path).state_dict()``: per module its parameters, then its
buffers (in attribute order), then its submodules, dotted; ``None`` slots and plain tensor attributes are left out.
"""

from __future__ import annotations

import ast
import collections
import os
import pickle
import re
import sys
import zipfile
from pathlib import PurePosixPath
from typing import Any

import torch

from weakclip.errors import UsageError

__all__ = ["is_torchscript_archive", "read_torchscript_state_dict"]

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
    """Internal: the archive asks for something this reader does not do (the message says what)."""


class _ScriptObject:
    """An instance of a TorchScript class, kept as its qualified name and its pickled state (never executed)."""

    qualname = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE on a class: not what TorchScript writes
        raise _Refused(f"the pickle calls the TorchScript class {self.qualname}")

    def __setstate__(self, state: Any) -> None:  # BUILD: store, do not interpret
        self.__dict__["_state"] = state


class _StorageType:
    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype


class _ClassInfo:
    def __init__(self) -> None:
        self.is_module = True
        self.parameters: list[str] | None = None
        self.buffers: list[str] | None = None
        self.has_setstate = False


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str):
        import io

        super().__init__(io.BytesIO(data))
        self._zf, self._prefix = zf, prefix
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            cls = self._classes.get(qualname)
            if cls is None:
                cls = self._classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return cls
        # A fresh callable per GLOBAL: a BUILD opcode applied to it cannot alter a shared object.
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda *args: _rebuild_tensor(*args)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
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
            nbytes = numel * torch.empty(0, dtype=stype.dtype).element_size()
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
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``, with the
    bounds checked by ``as_strided``; requires_grad, hooks and metadata are dropped."""
    if not isinstance(storage, torch.Tensor):
        raise _Refused("a tensor is rebuilt from something that is not a storage record")
    try:
        return storage.as_strided(tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset))
    except (RuntimeError, TypeError, ValueError) as e:
        raise _Refused(f"a tensor does not fit its storage ({str(e).splitlines()[0]})") from None


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a zip with TorchScript code (``<name>/code/…`` or ``<name>/constants.pkl``): a ``torch.jit.save``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _archive_prefix(zf: zipfile.ZipFile) -> str:
    """The top folder ``<name>/`` holding ``data.pkl``."""
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
            m = _CLASS_LINE.match(line)
            if m:
                current = table[f"{module}.{m.group(1)}"] = _ClassInfo()
                current.is_module = m.group(2) == "Module"
                continue
            if line and not line[0].isspace():
                current = None
            if current is None:
                continue
            m = _SLOT_LIST_LINE.match(line)
            if m:
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
    for k in names:
        v = state.get(k)
        if isinstance(v, torch.Tensor):
            out[prefix + k] = v
    for k, v in state.items():
        if isinstance(v, _ScriptObject):
            sub = classes.get(v.qualname)
            if sub is None or sub.is_module:
                _collect(v, f"{prefix}{k}.", classes, out)


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, as ``torch.jit.load(path).state_dict()`` names them
    (same dtypes, CPU), read without running any code from the file.

    Raises :class:`UsageError` (one line naming the file) for a file this reader refuses: a global other than the
    tensor-rebuilding ones, a class with its own ``__setstate__``, missing or mis-sized storage records.
    """
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
