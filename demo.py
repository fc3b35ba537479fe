"""``python demo.py [options]`` in a checkout = ``weakclip demo [options]`` (weakclip/demo.py): synthetic data → tiny
WeakCLIP training → ONNX export → ONNX Runtime pseudo masks (CPU) → mIoU, images/s and overlays under ``--out``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the checkout's weakclip, also without an install

from weakclip.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
