"""What kind of model file is this?  One sniffer (magic bytes and headers only: no unpickling, no full parse) behind
every tool's "wrong file" message and generation's ``--engine auto``: the kinds are the keys of :data:`DESCRIPTION`
(``truncated``: a safetensors header promising more bytes than the file holds, or a zip without its end record)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from weakclip.errors import UsageError

TENSORRT_SUFFIXES = (".engine", ".plan", ".trt")

# What each kind is, for messages: "<path>: this is <DESCRIPTION[kind]>".
DESCRIPTION = {
    "weakclip": "a WeakCLIP checkpoint (.safetensors)",
    "safetensors": "a .safetensors file without WeakCLIP metadata (e.g. CLIP weights)",
    "onnx": "an ONNX model",
    "tensorrt": "a serialized TensorRT engine",
    "torch": "a PyTorch checkpoint (torch.save: a training last.pt or an official mmseg .pth)",
    "missing": "missing",
    "directory": "a directory",
    "empty": "an empty file",
    "truncated": "a truncated or corrupt file (its header promises more bytes than it holds: an interrupted copy "
    "or download?)",
    "unknown": "not a model file this project knows (not safetensors, ONNX, TensorRT or a PyTorch checkpoint)",
}

# Which command takes each kind, for messages.
TAKEN_BY = {
    "weakclip": "generate --engine torch (or auto), export --checkpoint, evaluate through generate",
    "safetensors": "build_model(preset, clip_weights=PATH) as CLIP weights",
    "onnx": "generate --engine onnxruntime (or auto) or --engine tensorrt",
    "tensorrt": "generate --engine tensorrt",
    "torch": "weakclip convert (official hustvl/WeakCLIP .pth) or train --resume (our last.pt)",
}


def sniff(path: str | os.PathLike) -> str:
    """The kind of ``path``, from its first bytes and, for safetensors, its JSON header."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_dir():
        return "directory"
    size = p.stat().st_size
    if size == 0:
        return "empty"
    with open(p, "rb") as f:
        head = f.read(64)
        (n,) = struct.unpack("<Q", head[:8]) if len(head) >= 9 else (0,)
        if 2 <= n <= size - 8 and head[8:9] == b"{":  # safetensors: u64 header length, then the JSON header
            if n > 100 * 2**20:
                return "unknown"
            f.seek(8)
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError):
                return "unknown"
            tensors = [v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
            ends = [int(v["data_offsets"][1]) for v in tensors if "data_offsets" in v]
            if ends and max(ends) > size - 8 - n:
                return "truncated"
            fmt = str((header.get("__metadata__") or {}).get("format", ""))
            return "weakclip" if fmt.startswith("weakclip-checkpoint") else "safetensors"
    if head[:4] == b"PK\x03\x04":
        import zipfile

        return "torch" if zipfile.is_zipfile(p) else "truncated"
    if head[:1] == b"\x80":
        return "torch"
    # ONNX ModelProto: field 1 (ir_version, varint; tag 0x08) with a small version number, then usually field 2
    # (producer_name, tag 0x12), 3, 4, 5, 7 (graph, tag 0x3a) or 8 (opset_import, tag 0x42).
    if len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in (0x12, 0x1A, 0x22, 0x28, 0x3A, 0x42):
        return "onnx"
    if p.suffix.lower() in TENSORRT_SUFFIXES:
        return "tensorrt"
    return "unknown"


def expect(path: str | os.PathLike, kinds: tuple[str, ...], role: str, option: str | None = None) -> str:
    """Return the kind of ``path`` if it is one of ``kinds``; otherwise raise :class:`UsageError` with one line that
    names the option and the file, says what it is, what ``role`` expected and which command takes it."""
    kind = sniff(path)
    if kind in kinds:
        return kind
    wanted = " or ".join(DESCRIPTION[k] for k in kinds)
    where = f"{option} {path}" if option else f"{path}"
    if kind in ("missing", "directory", "empty", "truncated"):
        raise UsageError(f"{where}: {DESCRIPTION[kind]}; {role} expects {wanted}")
    hint = f"; {TAKEN_BY[kind]} takes it" if kind in TAKEN_BY else ""
    raise UsageError(f"{where}: this is {DESCRIPTION[kind]}, but {role} expects {wanted}{hint}")
