"""Convert an official hustvl/WeakCLIP (mmseg 0.19) checkpoint into a WeakCLIP checkpoint.

    python -m weakclip.convert_official IN.pth OUT.safetensors [--preset vit_b16_voc]

The official ContextDecoder feeds every decoder layer the original queries and keeps only the last layer's output,
so only layer index ``transformer_layers - 1`` (the third) of ``decoder`` / ``anti_decoder`` affects the result:
it becomes our 1-layer stack (``coattn_layers=1``).  The official ViT adds ``class_embedding`` twice to the CLS
token (``double_cls_embedding=True``).  The file is read with ``torch.load(weights_only=True)``; a checkpoint that
needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from .checkpoint import load_state_dict_strict, save_checkpoint
from .classes import COCO_CLASSES, VOC_CLASSES
from .model import WeakCLIP, build_model

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


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - any refusal of the safe unpickler
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: refused: the checkpoint needs arbitrary pickle loading, which is unsafe for files you did not "
            f"create ({first}). Re-save it as a plain tensor state dict, e.g. "
            f"torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.pth'), only if you trust it."
        ) from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a dict of tensors (optionally under 'state_dict')")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key layout → ours (1-layer co-attention stacks from the official last decoder layer)."""
    n_layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"context_decoder\.decoder\.(\d+)\.", k)))
    last = n_layers - 1
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


def convert(in_path: str | Path, preset: str | None = None, class_names: list[str] | None = None) -> WeakCLIP:
    sd = convert_state_dict(read_official(in_path))
    num_classes = sd["decoder.conv_seg.weight"].shape[0]
    if class_names is None:
        class_names = {21: list(VOC_CLASSES), 81: list(COCO_CLASSES)}.get(num_classes)
        if class_names is None:
            raise ValueError(f"{in_path}: {num_classes} classes; pass --class-names for a non-VOC/COCO model")
    if preset is None:
        preset = "vit_b16_coco" if num_classes == 81 else "vit_b16_voc"
    crop = int(round((sd["image_encoder.visual.positional_embedding"].shape[0] - 1) ** 0.5)) * 16
    model = build_model(
        preset, class_names=tuple(class_names), coattn_layers=1, double_cls_embedding=True, crop_size=crop
    )
    load_state_dict_strict(model, sd, source=str(in_path))
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="official checkpoint (.pth with 'state_dict')")
    ap.add_argument("output", help="output WeakCLIP checkpoint (.safetensors)")
    ap.add_argument("--preset", default=None, help="base preset (default: from the number of classes)")
    ap.add_argument("--class-names", default=None, help="text file with one class name per line")
    args = ap.parse_args(argv)
    names = Path(args.class_names).read_text().split("\n") if args.class_names else None
    names = [n.strip() for n in names if n.strip()] if names else None
    try:
        model = convert(args.input, args.preset, names)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    save_checkpoint(model, args.output)
    print(f"wrote {args.output} ({model.config.num_classes} classes, crop {model.config.crop_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
