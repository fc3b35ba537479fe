"""WeakCLIP: CLIP adapted for weakly-supervised semantic segmentation."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, WeakCLIPConfig, get_config
from .model import WeakCLIP, WeakCLIPOutput, build_from_config, build_model, parameter_table

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "WeakCLIP",
    "WeakCLIPConfig",
    "WeakCLIPOutput",
    "build_from_config",
    "build_model",
    "get_config",
    "load_checkpoint",
    "parameter_table",
    "save_checkpoint",
]
