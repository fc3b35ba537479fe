"""Identity and weight layout of the co-attention TensorRT plugin from ``plugin_names.json`` (no CUDA needed), the
one source of truth shared with the C++ plugin; the exporter and ``weakclip.engines.cuda_ops`` both read it here."""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

PLUGIN_JSON_NAME = "plugin_names.json"


def plugin_json_text() -> str:
    """The text of ``plugin_names.json`` beside the engines package's C sources."""
    return (resources.files("weakclip.engines") / "csrc" / PLUGIN_JSON_NAME).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def plugin_spec() -> dict[str, Any]:
    """The parsed ``plugin_names.json`` (op_type, plugin_version, plugin_namespace, attributes, packed_weights ...)."""
    return json.loads(plugin_json_text())


def packed_weight_entries(layers: int) -> list[tuple[str, str]]:
    """(state-dict name, shape symbols) of every packed tensor in blob order; each run of ``{i}`` entries in the
    JSON is repeated layer-major (all of layer 0, then layer 1, ...)."""
    out: list[tuple[str, str]] = []
    for per_layer, run in itertools.groupby(plugin_spec()["packed_weights"], key=lambda e: "{i}" in e[0]):
        entries = list(run)
        out += [(n.replace("{i}", str(i)), s) for i in range(layers if per_layer else 1) for n, s in entries]
    return out


def packed_weight_names(layers: int) -> list[str]:
    """State-dict names of the packed weights, in blob (and launcher pointer-array) order."""
    return [n for n, _ in packed_weight_entries(layers)]


def packed_weight_shapes(layers: int, embed_dim: int, width: int, mlp_hidden: int) -> list[tuple[int, ...]]:
    """Shapes of the packed weights for these dims (E = embed_dim, W = width, M = mlp_hidden)."""
    sym = {"E": embed_dim, "W": width, "M": mlp_hidden}
    return [tuple(sym[s] for s in shape.split(",")) for _, shape in packed_weight_entries(layers)]


@dataclass(frozen=True)
class CoAttnDims:
    embed_dim: int  # E
    width: int  # W
    mlp_hidden: int  # M
    layers: int  # L


def state_dict_of(weights: Any) -> Mapping[str, torch.Tensor]:
    """The state dict of a ``CoAttentionMatching`` module, or ``weights`` itself when it already is one."""
    if isinstance(weights, torch.nn.Module):
        return weights.state_dict()
    if isinstance(weights, Mapping):
        return weights
    raise TypeError(f"weights must be a CoAttentionMatching module or its state dict, got {type(weights).__name__}")


def coattention_dims(weights: Any) -> CoAttnDims:
    """Dims of a ``CoAttentionMatching`` state dict (or module)."""
    sd = state_dict_of(weights)
    layers = len({k.split(".")[1] for k in sd if k.startswith("text_decoder.")})
    width, embed_dim = sd["memory_proj.1.weight"].shape
    mlp_hidden = sd["text_decoder.0.mlp.0.weight"].shape[0] if layers > 0 else 4 * width
    return CoAttnDims(int(embed_dim), int(width), int(mlp_hidden), layers)


def ordered_weights(weights: Any) -> tuple[list[torch.Tensor], CoAttnDims]:
    """The state-dict tensors in packed order, shape-checked; missing or unexpected keys are an error."""
    sd = state_dict_of(weights)
    dims = coattention_dims(sd)
    names = packed_weight_names(dims.layers)
    missing = [n for n in names if n not in sd]
    unexpected = sorted(set(sd) - set(names))
    if missing or unexpected:
        raise KeyError(
            f"co-attention weights do not match plugin_names.json packed_weights: missing {missing}, "
            f"unexpected {unexpected}"
        )
    shapes = packed_weight_shapes(dims.layers, dims.embed_dim, dims.width, dims.mlp_hidden)
    for name, shape in zip(names, shapes, strict=True):
        if tuple(sd[name].shape) != shape:
            raise ValueError(f"{name}: shape {tuple(sd[name].shape)}, expected {shape}")
    return [sd[n].detach() for n in names], dims


def pack_coattention_weights(weights: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``weights`` input of the TensorRT node: 1-D (P,) concatenation of the state-dict tensors in packed order."""
    tensors, _ = ordered_weights(weights)
    return torch.cat([t.reshape(-1).to(device="cpu", dtype=dtype) for t in tensors])
