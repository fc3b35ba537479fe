"""Convert an official hustvl/WeakCLIP (mmseg 0.19) checkpoint into a WeakCLIP checkpoint.

    weakclip convert IN.pth OUT.safetensors [--preset NAME] [--class-names FILE]

VOC (21 classes) and COCO (91 classes: the official ``COCODataset.CLASSES``, the 91 COCO category-id slots with
background first and the unused slots such as "street sign" kept) convert with no options: the architecture preset
is recognised from the tensor shapes and the class list from the head size (``decode_head.conv_seg``), unless the
checkpoint's own ``meta.CLASSES`` names the classes (used when it has the head's length) or ``--class-names`` is
given.  The names and where they came from are recorded in the output checkpoint (metadata ``class_list``).

The official ContextDecoder feeds every decoder layer the original queries and keeps only the last layer's output,
so only layer index ``transformer_layers - 1`` (the third) of ``decoder`` / ``anti_decoder`` affects the result:
it becomes our 1-layer stack (``coattn_layers=1``).  The official ViT adds ``class_embedding`` twice to the CLS
token (``double_cls_embedding=True``).  The file is read with ``torch.load(weights_only=True)``; a checkpoint that
needs arbitrary unpickling is refused.  Exit status: 0 written, 2 the input is not a convertible official
checkpoint (one ``error:`` line saying what the file is and which command takes it), 1 the output cannot be written.
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
    ("backbone.fpn1.", "adapter.fpn1."),
    ("backbone.fpn2.", "adapter.fpn2."),
    ("backbone.fpn3.", "adapter.fpn3."),
    ("backbone.fpn4.", "adapter.fpn4."),
    ("backbone.", "image_encoder.visual."),
    ("text_encoder.", "text_encoder.tower."),
    ("context_decoder.memory_proj.", "coattention.memory_proj."),
    ("context_decoder.text_proj.", "coattention.text_proj."),
    ("context_decoder.out_proj.", "coattention.text_out."),
    ("context_decoder.anti_out_proj.", "coattention.visual_out."),
    ("decode_head.scale_heads.", "decoder.scale_heads."),
    ("decode_head.conv_seg.", "decoder.conv_seg."),
)
_SKIP = re.compile(r"^(auxiliary_head|identity_head)\.|\.attn_mask$|^logit_scale$")
_DECODER_LAYER = re.compile(r"context_decoder\.decoder\.(\d+)\.")
HEAD_KEY = "decode_head.conv_seg.weight"

# Keys of the training state train.py writes to <work_dir>/last.pt (training/train.py: save_training_state).
_TRAIN_STATE_KEYS = {"model", "optimizer", "iteration", "rng"}


# ----------------------------------------------------------------------------------------------------------------
# reading and recognising the input


def _not_official(path: str | Path, what: str, hint: str) -> UsageError:
    return UsageError(f"{path}: this is {what}, not {ROLE}; {hint}")


def check_input_kind(path: str | Path) -> None:
    """Refuse a file that is not a torch checkpoint at all (ours, ONNX, TensorRT, missing ...) in one line."""
    kind = sniff(path)
    if kind == "torch":
        return
    if kind in ("missing", "directory", "empty", "truncated"):
        raise UsageError(f"{path}: the input checkpoint is {DESCRIPTION[kind]}; expected {ROLE}")
    if kind == "weakclip":
        raise _not_official(path, DESCRIPTION[kind], "it needs no conversion: export --checkpoint and generate "
                            "--engine torch take it")  # fmt: skip
    hint = f"{TAKEN_BY[kind]} takes it" if kind in TAKEN_BY else "the converter reads torch.save files only"
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
        raise _not_official(path, "a training checkpoint from train.py (last.pt)",
                            "resume with train --resume, or use final.safetensors from the same work_dir")  # fmt: skip
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        found = f"keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise _not_official(path, f"a torch file without a tensor state dict ({found})",
                            "expected a dict of tensors, optionally under 'state_dict'")  # fmt: skip
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    if HEAD_KEY not in sd or not any(_DECODER_LAYER.match(k) for k in sd):
        sample = ", ".join(sorted(sd)[:3])
        raise _not_official(path, f"a state dict of {len(sd)} tensors without the official WeakCLIP keys "
                            f"({HEAD_KEY}, context_decoder.decoder.N.*; it has e.g. {sample})",
                            "only hustvl/WeakCLIP checkpoints convert")  # fmt: skip
    return sd, dict(meta) if isinstance(meta, Mapping) else {}


# ----------------------------------------------------------------------------------------------------------------
# key mapping


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key layout → ours (1-layer co-attention stacks from the official last decoder layer)."""
    layers = [int(m.group(1)) for k in sd if (m := _DECODER_LAYER.match(k))]
    if not layers:
        raise UsageError(f"no context_decoder.decoder.N.* keys: not {ROLE}")
    last = max(layers)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if _SKIP.search(k):
            continue
        if k == "contexts":
            out["prompt.contexts"] = v
            continue
        if k in ("gamma", "beta"):
            out[f"coattention.{k}"] = v
            continue
        m = re.match(r"context_decoder\.(decoder|anti_decoder)\.(\d+)\.(.*)$", k)
        if m:
            if int(m.group(2)) == last:
                stack = "text_decoder" if m.group(1) == "decoder" else "visual_decoder"
                out[f"coattention.{stack}.0.{m.group(3)}"] = v
            continue
        m = re.match(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$", k)
        if m:
            out[f"decoder.{m.group(1)}.{m.group(2)}.{m.group(3)}"] = v
            continue
        for src, dst in _PREFIX_MAP:
            if k.startswith(src):
                out[dst + k[len(src) :]] = v
                break
        else:
            out[k] = v  # left as-is: the strict load below lists it as unexpected
    return out


# ----------------------------------------------------------------------------------------------------------------
# architecture and classes


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
    """(class names, where they came from): --class-names > the checkpoint's meta.CLASSES > built-in list by K."""
    if class_names is not None:
        names = tuple(class_names)
        if len(names) != num_classes:
            raise UsageError(f"--class-names has {len(names)} names but the checkpoint's head has {num_classes} "
                             "classes")  # fmt: skip
        return names, "--class-names"
    recorded = meta.get("CLASSES")
    if (isinstance(recorded, (list, tuple)) and len(recorded) == num_classes
            and all(isinstance(n, str) for n in recorded)):  # fmt: skip
        return tuple(recorded), "checkpoint meta.CLASSES"
    for key, names in CLASS_LISTS.items():
        if len(names) == num_classes:
            return names, key
    sizes = ", ".join(f"{len(v)} ({k})" for k, v in CLASS_LISTS.items())
    raise UsageError(f"{source}: the head has {num_classes} classes and the checkpoint names none; built-in lists "
                     f"have {sizes}: pass --class-names FILE (one name per line, background first)")  # fmt: skip


def convert_with_info(
    in_path: str | Path, preset: str | None = None, class_names: Sequence[str] | None = None
) -> tuple[WeakCLIP, dict[str, str]]:
    """Convert and return (model, info): info holds the preset and the class list's source (also in metadata)."""
    official, meta = read_official(in_path)
    sd = convert_state_dict(official)
    head = sd.get("decoder.conv_seg.weight")
    if head is None:
        raise UsageError(f"{in_path}: no {HEAD_KEY}: not {ROLE}")
    num_classes = int(head.shape[0])
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
    info = {"converted_from": Path(in_path).name, "preset": preset, "class_list": source}
    return model, info


def convert(in_path: str | Path, preset: str | None = None, class_names: Sequence[str] | None = None) -> WeakCLIP:
    """The converted model (see the module docstring); UsageError if ``in_path`` is not an official checkpoint."""
    return convert_with_info(in_path, preset, class_names)[0]


# ----------------------------------------------------------------------------------------------------------------
# command line
