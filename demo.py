"""``python demo.py [options]`` in a checkout = ``weakclip demo [options]`` (weakclip/cli/demo.py): synthetic data →
tiny WeakCLIP training → ONNX export → ONNX Runtime pseudo masks (CPU) → mIoU, images/s and overlays under ``--out``.
Needs the package installed (``make setup`` installs it editable)."""

import sys

from weakclip.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
