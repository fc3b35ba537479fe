"""Convert an official hustvl/WeakCLIP (mmseg 0.19) checkpoint into a WeakCLIP checkpoint (``weakclip convert``).

The official ContextDecoder feeds every layer the original queries and keeps only the last layer's output, so only
layer ``transformer_layers - 1`` of ``decoder`` / ``anti_decoder`` matters: it becomes our 1-layer stack.  The
official ViT adds ``class_embedding`` twice to the CLS token.  The file is read with ``weights_only=True``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from weakclip.data.classes import CLASS_LISTS
from weakclip.data.filekind import DESCRIPTION, TAKEN_BY, sniff
from weakclip.errors import UsageError
from weakclip.model.checkpoint import StateDictMismatchError, load_state_dict_strict
from weakclip.model.config import PRESETS, get_config
from weakclip.model.model import WeakCLIP, build_model

ROLE = "an official hustvl/WeakCLIP checkpoint (.pth: mmseg state_dict)"

# (official prefix, our prefix); applied in order, first match wins.
_PREFIX_MAP: tuple[tuple[str, str], ...] = (
    ("contexts", "prompt.contexts"),
    ("gamma", "coattention.gamma"),
    ("beta", "coattention.beta"),
    ("backbone.fpn", "adapter.fpn"),
    ("backbone.", "image_encoder.visual."),
    ("text_encoder.", "text_encoder.tower."),
    ("context_decoder.out_proj.", "coattention.text_out."),
    ("context_decoder.anti_out_proj.", "coattention.visual_out."),
    ("context_decoder.", "coattention."),
    ("decode_head.", "decoder."),
)
_SKIP = re.compile(r"^(auxiliary_head|identity_head)\.|\.attn_mask$|^logit_scale$")
_DECODER_LAYER = re.compile(r"context_decoder\.decoder\.(\d+)\.")
HEAD_KEY = "decode_head.conv_seg.weight"

_TRAIN_STATE_KEYS = {"model", "optimizer", "iteration", "rng"}  # what train.py writes to <work_dir>/last.pt


def _not_official(path: str | Path, what: str, hint: str) -> UsageError:
    return UsageError(f"{path}: this is {what}, not {ROLE}; {hint}")


def check_input_kind(path: str | Path) -> None:
    """Refuse a file that is not a torch checkpoint at all (ours, ONNX, TensorRT, missing ...) in one line."""
    kind = sniff(path)
    if kind == "torch":
        return
    if kind in ("missing", "directory", "empty", "truncated"):
        raise UsageError(f"{path}: the input checkpoint is {DESCRIPTION[kind]}; expected {ROLE}")
    hint = f"{TAKEN_BY[kind]} takes it" if kind in TAKEN_BY else "the converter reads torch.save files only"
    if kind == "weakclip":
        hint = "it needs no conversion: export --checkpoint and generate --engine torch take it"
    raise _not_official(path, DESCRIPTION[kind], hint)


def read_official(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict with ``module.`` stripped, the checkpoint's ``meta`` dict or {}); UsageError for any other file."""
    check_input_kind(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal of the safe unpickler
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"{path}: refused: the checkpoint needs arbitrary pickle loading, which is unsafe for files you did not "
            f"create ({first}). Re-save it as a plain tensor state dict, e.g. "
            f"torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.pth'), only if you trust it."
        ) from None
    if isinstance(obj, Mapping) and _TRAIN_STATE_KEYS <= set(obj):
        what = "a training checkpoint from train.py (last.pt)"
        raise _not_official(path, what, "resume with train --resume, or use final.safetensors from the same work_dir")
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        found = f"keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        what = f"a torch file without a tensor state dict ({found})"
        raise _not_official(path, what, "expected a dict of tensors, optionally under 'state_dict'")
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    if HEAD_KEY not in sd or not any(_DECODER_LAYER.match(k) for k in sd):
        keys = f"{HEAD_KEY}, context_decoder.decoder.N.*; it has e.g. {', '.join(sorted(sd)[:3])}"
        what = f"a state dict of {len(sd)} tensors without the official WeakCLIP keys ({keys})"
        raise _not_official(path, what, "only hustvl/WeakCLIP checkpoints convert")
    return sd, dict(meta) if isinstance(meta, Mapping) else {}


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key layout → ours (1-layer co-attention stacks from the official last decoder layer)."""
    last = max(int(m.group(1)) for k in sd if (m := _DECODER_LAYER.match(k)))  # read_official checked there is one
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"context_decoder\.(decoder|anti_decoder)\.(\d+)\.(.*)$", k)
        if _SKIP.search(k) or (m and int(m.group(2)) != last):
            continue
        if m:
            stack = "text_decoder" if m.group(1) == "decoder" else "visual_decoder"
            out[f"coattention.{stack}.0.{m.group(3)}"] = v
        elif m := re.match(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$", k):
            out[f"decoder.{m.group(1)}.{m.group(2)}.{m.group(3)}"] = v
        else:  # a key no prefix maps is left as-is: the strict load lists it as unexpected
            src, dst = next(((s, d) for s, d in _PREFIX_MAP if k.startswith(s)), ("", ""))
            out[dst + k[len(src) :]] = v
    return out


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pat.match(k))})


def architecture(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Config fields that the (converted) tensor shapes determine; heads and tap layers are not among them."""
    try:
        conv1 = sd["image_encoder.visual.conv1.weight"]
        return {
            "vision_width": int(conv1.shape[0]),
            "patch_size": int(conv1.shape[-1]),
            "vision_layers": _count(sd, "image_encoder.visual.transformer.resblocks."),
            "embed_dim": int(sd["image_encoder.visual.proj"].shape[1]),
            "text_width": int(sd["text_encoder.tower.token_embedding.weight"].shape[1]),
            "text_layers": _count(sd, "text_encoder.tower.transformer.resblocks."),
            "coattn_width": int(sd["coattention.memory_proj.1.weight"].shape[0]),
            "neck_channels": int(sd["decoder.lateral_convs.0.weight"].shape[0]),
            "head_channels": int(sd["decoder.scale_heads.0.0.conv.weight"].shape[0]),
        }
    except KeyError as e:
        raise UsageError(f"official checkpoint lacks {e.args[0]} (after key mapping): not {ROLE}") from None


def detect_preset(sd: Mapping[str, torch.Tensor], source: str = "") -> str:
    """The first preset whose architecture fields equal the tensor shapes (VOC and COCO ViT-B/16 are the same)."""
    arch = architecture(sd)
    for name in PRESETS:
        cfg = get_config(name)
        if all(getattr(cfg, k) == v for k, v in arch.items()):
            return name
    shown = ", ".join(f"{k}={v}" for k, v in arch.items())
    raise UsageError(f"{source}: the architecture ({shown}) matches no preset of {sorted(PRESETS)}; pass --preset")


def choose_class_names(
    num_classes: int, meta: Mapping[str, Any], class_names: Sequence[str] | None, source: str = ""
) -> tuple[tuple[str, ...], str]:
    """(class names, where they came from): --class-names > the checkpoint's meta.CLASSES > built-in list by K
    (VOC 21; COCO 91: the official category-id slots, background first)."""
    if class_names is not None:
        names = tuple(class_names)
        if len(names) != num_classes:
            raise UsageError(
                f"--class-names has {len(names)} names but the checkpoint's head has {num_classes} classes"
            )
        return names, "--class-names"
    recorded: Any = meta.get("CLASSES")
    named = isinstance(recorded, (list, tuple)) and all(isinstance(n, str) for n in recorded)
    if named and len(recorded) == num_classes:
        return tuple(recorded), "checkpoint meta.CLASSES"
    for key, names in CLASS_LISTS.items():
        if len(names) == num_classes:
            return names, key
    sizes = ", ".join(f"{len(v)} ({k})" for k, v in CLASS_LISTS.items())
    head = f"{source}: the head has {num_classes} classes and the checkpoint names none; built-in lists have {sizes}"
    raise UsageError(f"{head}: pass --class-names FILE (one name per line, background first)")


def convert_with_info(
    in_path: str | Path, preset: str | None = None, class_names: Sequence[str] | None = None
) -> tuple[WeakCLIP, dict[str, str]]:
    """Convert and return (model, info): info holds the preset and the class list's source (also in metadata)."""
    official, meta = read_official(in_path)
    sd = convert_state_dict(official)
    num_classes = int(sd["decoder.conv_seg.weight"].shape[0])  # read_official checked the head is there
    names, source = choose_class_names(num_classes, meta, class_names, str(in_path))
    if preset is None:
        preset = detect_preset(sd, str(in_path))
    elif preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose one of {sorted(PRESETS)}")
    grid = int(round((sd["image_encoder.visual.positional_embedding"].shape[0] - 1) ** 0.5))
    crop = grid * int(sd["image_encoder.visual.conv1.weight"].shape[-1])
    try:
        model = build_model(preset, class_names=names, coattn_layers=1, double_cls_embedding=True, crop_size=crop)
    except ValueError as e:  # e.g. a class name longer than the name context
        raise UsageError(f"{in_path}: {e}") from None
    try:
        load_state_dict_strict(model, sd, source=str(in_path))
    except StateDictMismatchError as e:
        raise UsageError(str(e)) from None
    return model, {"converted_from": Path(in_path).name, "preset": preset, "class_list": source}


def convert(in_path: str | Path, preset: str | None = None, class_names: Sequence[str] | None = None) -> WeakCLIP:
    """The converted model (see the module docstring); UsageError if ``in_path`` is not an official checkpoint."""
    return convert_with_info(in_path, preset, class_names)[0]
