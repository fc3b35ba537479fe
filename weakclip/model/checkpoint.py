"""Checkpoints that rebuild the model by themselves: safetensors weights + JSON config + class names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from weakclip.data.io import atomic_path
from weakclip.model.config import WeakCLIPConfig
from weakclip.model.model import WeakCLIP, build_from_config

FORMAT = "weakclip-checkpoint-1"


def save_checkpoint(model: WeakCLIP, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write the state dict, config and class names atomically to one .safetensors file; ``extra``: more metadata."""
    path = Path(path)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "class_names": json.dumps(list(model.config.class_names)),
    }
    meta.update(extra or {})
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=meta)
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a WeakCLIP checkpoint (metadata format {meta.get('format')!r})")
    return meta


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> WeakCLIP:
    """Rebuild the model from the checkpoint alone and load it strictly (missing/unexpected keys are listed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        meta = read_checkpoint_metadata(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot read checkpoint ({e})") from None
    model = build_from_config(WeakCLIPConfig.from_dict(json.loads(meta["config"])))
    with safe_open(str(path), framework="pt", device=str(map_location)) as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    load_state_dict_strict(model, sd, source=str(path))
    return model


class StateDictMismatchError(KeyError):
    """Missing / unexpected / mis-shaped keys; str() is the plain message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _few(names: list[str], n: int = 5) -> str:
    """At most ``n`` names and the count: a mismatch of hundreds of keys stays one readable line."""
    shown = ", ".join(names[:n])
    return f"{len(names)} ({shown}{', …' if len(names) > n else ''})" if names else "none"


def load_state_dict_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = {k: (tuple(sd[k].shape), tuple(v.shape)) for k, v in expected.items() if k in sd}
    bad_shape = [f"{k} {got} vs {want}" for k, (got, want) in shapes.items() if got != want]
    if missing or unexpected or bad_shape:
        raise StateDictMismatchError(
            f"{source}: state dict does not match the model: missing keys {_few(missing)}, unexpected keys "
            f"{_few(unexpected)}, shape mismatches {_few(bad_shape, 3)}"
        )
    model.load_state_dict(sd, strict=True)
