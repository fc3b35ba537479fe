"""weakclip convert: an official hustvl/WeakCLIP .pth checkpoint to our .safetensors (the command)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from weakclip.errors import ArgumentParser, RuntimeFailure, UsageError, cli


@cli
def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="weakclip convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="official checkpoint (.pth with 'state_dict')")
    ap.add_argument("output", help="output WeakCLIP checkpoint (.safetensors)")
    ap.add_argument("--preset", help="architecture preset (default: recognised from the shapes)")
    default = "from the checkpoint's meta.CLASSES or the head size: 21 VOC, 81/91 COCO"
    ap.add_argument("--class-names", help=f"text file, one class name per line (default: {default})")
    args = ap.parse_args(argv)
    from weakclip.data.datasets import read_class_names  # torch: imported after parsing
    from weakclip.model.checkpoint import save_checkpoint
    from weakclip.model.convert_official import convert_with_info

    try:
        names = list(read_class_names(args.class_names)) if args.class_names else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    if Path(args.output).suffix != ".safetensors":
        raise UsageError(f"{args.output}: the output must be a .safetensors file")
    model, info = convert_with_info(args.input, args.preset, names)
    try:
        save_checkpoint(model, args.output, extra=info)
    except OSError as e:
        raise RuntimeFailure(f"{args.output}: cannot write the checkpoint ({e.strerror or e})") from None
    classes = f"{model.config.num_classes} classes from {info['class_list']}"
    print(f"wrote {args.output} ({classes}, preset {info['preset']}, crop {model.config.crop_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
