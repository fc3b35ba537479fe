"""WeakCLIP configuration: one dataclass, a comment per field, and named presets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from weakclip.data.classes import COCO_CLASSES, IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES

# View ratios of test-time inference: the official six (× flip = the paper's 12 views); every tool's default is one.
OFFICIAL_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
DEFAULT_SCALES: tuple[float, ...] = (1.0,)


def scales_from(value: str | Sequence[float]) -> tuple[float, ...]:
    """The one validation of view ratios: ``"official"``, ``"0.5,1.0"`` or a sequence of positive numbers."""
    if isinstance(value, str):
        if value.strip().lower() == "official":
            return OFFICIAL_SCALES
        try:
            value = [float(s) for s in value.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"scales: expected 'official' or a comma list of ratios, got {value!r}") from None
    scales = tuple(float(r) for r in value)
    if not scales or any(not r > 0 for r in scales):
        raise ValueError(f"scales must be positive ratios, got {value!r}")
    return scales


@dataclass
class WeakCLIPConfig:
    # --- data / task ---
    class_names: tuple[str, ...] = VOC_CLASSES  # K class names, index 0 = "background"; bare names, no templates
    crop_size: int = 512  # training crop / sliding-window size; the stored positional grid is crop/patch square
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB mean (0-255) subtracted from the input
    std: tuple[float, float, float] = IMAGENET_STD  # RGB std (0-255) dividing the input

    # --- CLIP image tower (open_clip VisionTransformer) ---
    clip_model_name: str = "ViT-B-16"  # open_clip architecture name used for `clip_weights="openai"`
    patch_size: int = 16  # ViT patch size; token grid is (H/patch, W/patch)
    vision_width: int = 768  # ViT width D
    vision_layers: int = 12  # number of ViT blocks
    vision_heads: int = 12  # ViT attention heads
    pretrain_image_size: int = 224  # image size of the pretrained positional grid (14×14 for ViT-B/16)
    tap_layers: tuple[int, ...] = (4, 6, 8, 12)  # 1-based blocks whose patch tokens feed the pyramid adapter
    drop_path_rate: float = 0.1  # stochastic depth in the frozen ViT during training (linear over the blocks)
    double_cls_embedding: bool = False  # official quirk: class_embedding added twice to CLS (converter sets True)

    # --- CLIP text tower ---
    embed_dim: int = 512  # joint embedding size (output of visual proj / text_projection)
    text_width: int = 512  # text transformer width
    text_layers: int = 12  # text transformer blocks
    text_heads: int = 8  # text transformer heads
    vocab_size: int = 49408  # CLIP BPE vocabulary size

    # --- learnable prompt ---
    name_context_length: int = 5  # tokens per class name: [SOT] name(≤3 BPE) [EOT] pad
    n_contexts: int = 8  # learnable context vectors shared by all classes (text length = 5 + 8 = 13)

    # --- co-attention matching ---
    coattn_width: int = 256  # width of the co-attention decoder layers
    coattn_heads: int = 4  # heads (head dim = width / heads)
    coattn_layers: int = 3  # chained decoder layers per stack (an official checkpoint converts to 1)
    coattn_mlp_ratio: int = 4  # MLP hidden = ratio × width
    coattn_dropout: float = 0.1  # dropout in attention output and MLP
    residual_scale_init: float = 0.1  # initial value of γ (text) and β (visual) residual scales

    # --- text-guided decoder ---
    neck_channels: int = 256  # FPN neck output channels
    head_channels: int = 256  # FPN head channels
    head_dropout: float = 0.1  # Dropout2d before the classifier

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def text_length(self) -> int:
        return self.name_context_length + self.n_contexts

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeakCLIPConfig:
        """The config of ``d`` (lists become tuples); unknown keys are a KeyError listing the valid ones."""
        names = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - names):
            raise KeyError(f"unknown WeakCLIP config key(s) {unknown}; valid keys: {sorted(names)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**values)


PRESETS: dict[str, dict[str, Any]] = {
    # Official VOC setting: OpenAI CLIP ViT-B/16, K = 21, 512 crop.
    "vit_b16_voc": dict(class_names=VOC_CLASSES),
    # Official COCO setting: K = 81 (contiguous indexing).
    "vit_b16_coco": dict(class_names=COCO_CLASSES),
    # A tiny random-init CLIP for tests and the demo (seconds on a CPU); same structure, small widths.
    "tiny": dict(
        class_names=VOC_CLASSES,
        crop_size=128,
        clip_model_name="",
        vision_width=64,
        vision_layers=4,
        vision_heads=2,
        tap_layers=(1, 2, 3, 4),
        drop_path_rate=0.0,
        embed_dim=64,
        text_width=64,
        text_layers=2,
        text_heads=2,
        coattn_width=32,
        coattn_heads=2,
        neck_channels=32,
        head_channels=32,
    ),
}


def get_config(preset: str, **overrides: Any) -> WeakCLIPConfig:
    """Build a config from a named preset plus keyword overrides (unknown keys are a clear error)."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return WeakCLIPConfig.from_dict({**PRESETS[preset], **overrides})
