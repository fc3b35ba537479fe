"""CLIP-ES seeds (Lin et al., CVPR 2023; linyq2117/CLIP-ES) from image-level labels: ``OUT/<name>.png`` (0 background,
class indices, 255 low confidence) for ``data.seed_dir``.  Differs from CLIP-ES in: fp32, EXIF-aware image decoding,
and an all-background seed for an image labelled with no foreground class."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from weakclip.data.io import file_sha256
from weakclip.data.labels import load_labels
from weakclip.errors import RuntimeFailure, UsageError
from weakclip.masks import batch
from weakclip.masks.seed_prompts import PROMPT_SETS
from weakclip.model.config import DEFAULT_SCALES, get_config, scales_from
from weakclip.model.crf import CLIP_ES_CRF, CRFParams, dense_crf

# CLIP's own input statistics (0-1 RGB); CLIP-ES generate_cams_*.py: _transform_resize → Normalize(...).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# eval_cam_with_crf.py: mean_bgr subtracted from the cv2 (BGR) image before the CRF, then cast to uint8.
CAFFE_MEAN_BGR: tuple[float, float, float] = (104.008, 116.669, 122.675)
CRF_UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default clip, used by eval_cam_with_crf.py


@dataclass(frozen=True)
class SeedOptions:
    """Every knob of the seed pipeline with its CLIP-ES source."""

    scales: tuple[float, ...] = DEFAULT_SCALES  # view scales; generate_cams_voc12.py runs 1.0 only (img_ms_and_flip)
    flip: bool = False  # add flipped views; CLIP-ES builds one and drops it (ms_imgs = [ms_imgs[0]])
    patch_multiple: int = 16  # view sides rounded *up* to this multiple (img_ms_and_flip: ceil(s·H/16)·16)
    logit_scale: float = 100.0  # 1/τ of the softmax: OpenAI CLIP's logit_scale.exp() (clip/model.py forward_last_layer)
    attn_layers: int = 8  # blocks whose attention is averaged into the affinity (perform: stack(...)[-8:])
    sinkhorn_rounds: int = 3  # column→row normalisation rounds (perform: once + range(2))
    power_steps: int = 1  # T ← T·T this many times (perform: range(1)), i.e. T^(2^steps)
    box_threshold: float | None = None  # scoremap2bbox threshold; None → the prompt set's (VOC 0.4, COCO 0.7)
    bg_power: float = 1.0  # background score (1 − max CAM)^α (eval_cam_with_crf.py: α = 1)
    crf: CRFParams | None = CLIP_ES_CRF  # None → no CRF (eval_cam.py: argmax of the scores)
    ignore_threshold: float = 0.95  # CRF confidence below this → 255 (eval_cam_with_crf.py: confidence < 0.95)
    crf_image: str = "clip_es"  # "clip_es": BGR − Caffe mean wrapped to uint8 (eval_cam_with_crf.py); "rgb": plain

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", scales_from(self.scales))
        if self.attn_layers < 1 or self.sinkhorn_rounds < 0 or self.power_steps < 0:
            raise ValueError("attn_layers must be >= 1, sinkhorn_rounds and power_steps >= 0")
        if self.box_threshold is not None and not 0.0 <= self.box_threshold <= 1.0:
            raise ValueError(f"box_threshold must be in [0, 1], got {self.box_threshold}")
        if self.crf_image not in ("clip_es", "rgb"):
            raise ValueError(f"crf_image must be 'clip_es' or 'rgb', got {self.crf_image!r}")


@dataclass(frozen=True)
class PromptSet:
    name: str
    template: str  # "{}" is replaced by a class's prompt name
    class_prompts: tuple[str, ...]  # prompt name of every foreground class 1..K-1 (index i ↔ class i + 1)
    background: tuple[str, ...]  # background concepts (only ever compete in the softmax; never a seed label)
    box_threshold: float

    def foreground_texts(self) -> list[str]:
        return [self.template.format(n) for n in self.class_prompts]


def resolve_prompts(class_names: Sequence[str], prompts: str | os.PathLike = "auto") -> PromptSet:
    """``voc``, ``coco``, ``generic``, ``auto`` (the first set naming every class) or a JSON file ``{"template",
    "classes", "background", "box_threshold"}``; background texts equal to a class name are dropped."""
    fg = [str(n) for n in class_names[1:]]
    if not fg:
        raise ValueError("class_names must hold 'background' plus at least one foreground class")
    key = str(prompts)
    if key == "auto":
        key = next((k for k in ("voc", "coco") if all(n in PROMPT_SETS[k]["classes"] for n in fg)), "generic")
    if key in PROMPT_SETS:
        spec, name = PROMPT_SETS[key], key
    else:
        path = Path(key)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts {key}: not one of {sorted(PROMPT_SETS)} / auto, and no such file")
        try:
            spec = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path}: cannot parse prompt set JSON ({e})") from None
        need = {"template": str, "classes": dict, "background": list}
        bad = [k for k, t in need.items() if not isinstance(spec.get(k), t)]
        if bad or "{}" not in spec["template"]:
            raise ValueError(
                f"{path}: a prompt set needs 'template' (with {{}}), 'classes' (object name → prompt name) and "
                f"'background' (list); wrong or missing: {bad or ['template']}"
            )
        spec, name = {"box_threshold": 0.4, **spec}, str(path)
    classes = {str(k): str(v) for k, v in spec["classes"].items()}
    lowered = {n.lower() for n in fg} | {classes.get(n, n).lower() for n in fg}
    background = tuple(b for b in spec["background"] if str(b).lower() not in lowered)
    if not background:
        raise ValueError(f"prompt set {name}: no background text left after removing the class names")
    return PromptSet(
        name=name,
        template=spec["template"],
        class_prompts=tuple(classes.get(n, n) for n in fg),
        background=background,
        box_threshold=float(spec["box_threshold"]),
    )


def view_size(height: int, width: int, scale: float, multiple: int = 16) -> tuple[int, int]:
    """(h, w) of a view: each side scaled and rounded *up* to ``multiple`` (img_ms_and_flip)."""
    return (int(np.ceil(scale * height / multiple) * multiple), int(np.ceil(scale * width / multiple) * multiple))


def preprocess(image: np.ndarray, size: tuple[int, int], flip: bool = False):
    """(H, W, 3) uint8 RGB → (1, 3, h, w): PIL bicubic resize, /255, CLIP mean/std, optionally mirrored."""
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size[::-1], Image.Resampling.BICUBIC))
    x = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)
    x = ((x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1))[None]
    return torch.flip(x, [-1]) if flip else x


def minmax_normalise(cams):
    """``pytorch_grad_cam.utils.image.scale_cam_image`` per map of a (..., h, w) tensor: (x − min) / (max + 1e-7)."""
    flat = cams.reshape(*cams.shape[:-2], -1)
    flat = flat - flat.min(-1, keepdim=True).values
    return (flat / (1e-7 + flat.max(-1, keepdim=True).values)).reshape(cams.shape)


def box_mask(cam: np.ndarray, threshold: float) -> np.ndarray:
    """(h, w) {0, 1} mask of the boxes of ``cam``'s high regions (scoremap2bbox, multi_contour_eval): as in CLIP-ES,
    every contour gives a box, its exclusive ends clipped to ``size − 1``."""
    h, w = cam.shape
    img = (np.asarray(cam, dtype=np.float32) * 255).astype(np.uint8)
    _, binary = cv2.threshold(img, int(threshold * int(img.max())), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    mask = np.zeros((h, w), dtype=np.float32)
    for c in contours:
        x, y, bw, bh = cv2.boundingRect(c)
        mask[y : min(y + bh, h - 1), x : min(x + bw, w - 1)] = 1.0
    return mask


def affinity_transition(attn, sinkhorn_rounds: int = 3, power_steps: int = 1):
    """Attention (n, n) → CAA transition: Sinkhorn rounds, (T + Tᵀ)/2, then ``power_steps`` × T ← T·T."""
    t = attn
    for _ in range(sinkhorn_rounds):
        t = t / t.sum(0, keepdim=True)
        t = t / t.sum(1, keepdim=True)
    t = (t + t.transpose(0, 1)) / 2
    for _ in range(power_steps):
        t = t @ t
    return t


def refine_cams(trans, cams, masks):
    """CAA refinement T · (mask_c ⊙ cam_c), min-max normalised: trans (n, n); cams, masks (C, h, w)."""
    C, h, w = cams.shape
    src = (masks * cams).reshape(C, h * w)  # (C, n): the box mask zeroes T's columns = source tokens
    return minmax_normalise((src @ trans.transpose(0, 1)).reshape(C, h, w))


def crf_input_image(image: np.ndarray, mode: str = "clip_es") -> np.ndarray:
    """The CRF's image: ``rgb`` as is; ``clip_es`` BGR − CAFFE_MEAN_BGR cast to uint8 (truncating, modulo 256, written
    out so it does not depend on the platform)."""
    if mode == "rgb":
        return np.ascontiguousarray(image, dtype=np.uint8)
    bgr = np.asarray(image, dtype=np.float32)[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    return np.ascontiguousarray((np.trunc(bgr).astype(np.int64) % 256).astype(np.uint8))


def seed_from_cams(
    image: np.ndarray, cams: np.ndarray, keys: Sequence[int], options: SeedOptions = SeedOptions()
) -> tuple[np.ndarray, np.ndarray]:
    """(mask (H, W) uint8: 0, keys or 255, scores (1 + C, H, W) [(1 − max CAM)^α, cams]) from cams (C, H, W)."""
    cams = np.asarray(cams, dtype=np.float32)
    H, W = image.shape[:2]
    if cams.shape[1:] != (H, W) or cams.shape[0] != len(keys):
        raise ValueError(f"cams {cams.shape} do not match the image {(H, W)} and {len(keys)} key(s)")
    full_keys = np.asarray([0, *[int(k) for k in keys]], dtype=np.int64)
    top = cams.max(0) if len(keys) else np.zeros((H, W), np.float32)
    bg = np.power(1.0 - top, options.bg_power, dtype=np.float32)
    scores = np.concatenate([bg[None], cams], axis=0)
    if len(keys) == 0:  # nothing but background to choose (CLIP-ES stops its worker here instead)
        return np.zeros((H, W), np.uint8), scores
    if options.crf is None:
        return full_keys[scores.argmax(0)].astype(np.uint8), scores

    q = dense_crf(crf_input_image(image, options.crf_image), scores, min_prob=CRF_UNARY_CLIP, **options.crf.as_kwargs())
    mask = full_keys[q.argmax(0)].astype(np.uint8)
    mask[q.max(0) < options.ignore_threshold] = 255
    return mask, scores


def run_block(blk, x, need_weights: bool, y=None):
    """An open_clip block on (B, N, D) tokens and its head-averaged attention (B, N, N); ``y`` replaces ``ln_1(x)``."""
    y = blk.ln_1(x) if y is None else y
    first = blk.attn.batch_first
    yt = y if first else y.transpose(0, 1)
    out, w = blk.attn(yt, yt, yt, need_weights=need_weights, average_attn_weights=True)
    x = x + blk.ls_1(out if first else out.transpose(0, 1))
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, w


@dataclass
class ImageCams:
    grid: tuple[int, int]  # (h, w) token grid
    gradcam: Any  # (C, h, w) normalised Grad-CAMs
    attn: Any  # (n, n) averaged patch-to-patch attention of the last attn_layers blocks
    masks: np.ndarray  # (C, h, w) box masks
    refined: Any  # (C, h, w) refined, normalised CAMs


@dataclass
class SeedResult:
    mask: np.ndarray  # (H, W) uint8 seed: 0 background, class indices, 255 ignored
    keys: np.ndarray  # (C,) K-class indices of the labelled classes, in label order
    cams: np.ndarray  # (C, H, W) float32 refined CAMs in [0, 1] at the image size (averaged over views)
    scores: np.ndarray  # (1 + C, H, W) float32 [background, cams]
    views: list[ImageCams] = field(default_factory=list)


class ClipSeeder:
    """CLIP-ES seeds over CLIP image and full-context text towers; ``cams`` stops before ``seed``'s CRF step."""

    def __init__(
        self,
        image_encoder,
        text_encoder,
        class_names: Sequence[str],
        prompts: str | os.PathLike | PromptSet = "auto",
        options: SeedOptions = SeedOptions(),
        device: str = "cpu",
        dtype=None,
    ):
        self.dtype = dtype or torch.float32
        self.device = torch.device(device)
        self.class_names = tuple(class_names)
        self.prompts = prompts if isinstance(prompts, PromptSet) else resolve_prompts(self.class_names, prompts)
        self.options = options
        self.box_threshold = options.box_threshold if options.box_threshold is not None else self.prompts.box_threshold
        self.visual = image_encoder.visual.to(self.device, self.dtype).eval().requires_grad_(False)
        self.text_tower = text_encoder.to(self.device, self.dtype).eval().requires_grad_(False)
        self.fg_text = self.encode_texts(self.prompts.foreground_texts())  # (K-1, E)
        self.bg_text = self.encode_texts([self.prompts.template.format(n) for n in self.prompts.background])  # (B_g, E)

    def encode_texts(self, texts: Sequence[str]):
        """L2-normalised text features (n, E)."""
        import open_clip

        ctx = self.text_tower.tower.positional_embedding.shape[0]
        tokens = open_clip.tokenize(list(texts), context_length=ctx).to(self.device)
        with torch.no_grad():
            emb = self.text_tower.token_embedding(tokens).to(self.dtype)
            feats = self.text_tower(emb, tokens.argmax(-1))
        return feats / feats.norm(dim=-1, keepdim=True)

    def _tokens(self, x):
        """Patch embedding + CLS + positional table resized to the grid (bilinear) + ln_pre → (1, 1 + n, D)."""
        from weakclip.model.clip import resize_pos_embed

        v = self.visual
        x = v.conv1(x)  # (1, D, h, w)
        _, D, h, w = x.shape
        x = torch.cat([v.class_embedding.to(x.dtype).reshape(1, 1, D), x.flatten(2).transpose(1, 2)], dim=1)
        pos = v.positional_embedding.to(x.dtype)
        x = x + resize_pos_embed(pos, int(round((pos.shape[0] - 1) ** 0.5)), (h, w))
        return v.ln_pre(x), (h, w)

    def view_cams(self, x, labels: Sequence[int]) -> ImageCams:
        """Grad-CAM + CAA for one normalised view x (1, 3, h·16, w·16) and the labelled classes."""
        opts = self.options
        blocks = list(self.visual.transformer.resblocks)
        first_kept = max(len(blocks) - opts.attn_layers, 0)
        attns = []
        with torch.no_grad():
            tokens, (h, w) = self._tokens(x.to(self.device, self.dtype))
            for i, blk in enumerate(blocks[:-1]):
                tokens, a = run_block(blk, tokens, need_weights=i >= first_kept)
                if a is not None:
                    attns.append(a[0])
        text = torch.cat([self.fg_text[[c - 1 for c in labels]], self.bg_text], dim=0)  # (C + B_g, E)
        gradcam, attn_last = self._gradcam(blocks[-1], tokens, text, len(labels), (h, w))
        attns.append(attn_last)
        attn = torch.stack(attns).mean(0)[1:, 1:]  # (n, n) patch → patch
        masks = np.stack([box_mask(c, self.box_threshold) for c in gradcam.float().cpu().numpy()])
        trans = affinity_transition(attn, opts.sinkhorn_rounds, opts.power_steps)
        refined = refine_cams(trans, gradcam, torch.from_numpy(masks).to(trans))
        return ImageCams(grid=(h, w), gradcam=gradcam, attn=attn, masks=masks, refined=refined)

    def _gradcam(self, blk, tokens, text, C: int, grid: tuple[int, int]):
        """Softmax-GradCAM of C targets in one batched pass: copy c of the last block's input scores target c."""
        h, w = grid
        v = self.visual
        with torch.no_grad():
            act = blk.ln_1(tokens)  # (1, N, D): the Grad-CAM activation (output of resblocks[-1].ln_1)
        with torch.enable_grad():
            a = act.expand(C, -1, -1).clone().requires_grad_(True)
            y, attn = run_block(blk, tokens, True, a)
            f = v.ln_post(y)[:, 1:].mean(1) @ v.proj  # (C, E): mean of the patch tokens (forward_last_layer)
            f = f / f.norm(dim=-1, keepdim=True)
            probs = (self.options.logit_scale * f @ text.T).softmax(-1)  # (C, C + B_g)
            idx = torch.arange(C, device=probs.device)
            (grads,) = torch.autograd.grad(probs[idx, idx].sum(), a)
        weights = grads[:, 1:].mean(1)  # (C, D): GradCAM.get_cam_weights = mean over h, w
        cam = (weights @ act[0, 1:].T).clamp_min(0).reshape(C, h, w)  # Σ_d weight_d · A_d, ReLU
        cam = minmax_normalise(minmax_normalise(cam))  # compute_cam_per_layer, then aggregate_multi_layers
        return cam.detach(), attn[0].detach()

    def cams(self, image: np.ndarray, labels: Sequence[int], keep_views: bool = False):
        """(keys (C,), cams (C, H, W) float32 in [0, 1], views) for the labelled classes of ``image``."""
        labels = list(dict.fromkeys(int(c) for c in labels))  # label order, duplicates dropped
        if bad := [c for c in labels if not 1 <= c < len(self.class_names)]:
            raise ValueError(f"label(s) {bad} outside the foreground classes 1..{len(self.class_names) - 1}")
        H, W = image.shape[:2]
        keys = np.asarray(labels, dtype=np.int64)
        if not labels:
            return keys, np.zeros((0, H, W), np.float32), []
        total = np.zeros((len(labels), H, W), np.float64)
        views = []
        flips = (False, True) if self.options.flip else (False,)
        for s in self.options.scales:
            size = view_size(H, W, s, self.options.patch_multiple)
            for flip in flips:
                vc = self.view_cams(preprocess(image, size, flip), labels)
                hi = np.stack([cv2.resize(m, (W, H)) for m in vc.refined.float().cpu().numpy()])
                total += hi[..., ::-1] if flip else hi
                if keep_views:
                    views.append(vc)
        return keys, (total / (len(self.options.scales) * len(flips))).astype(np.float32), views

    def seed(self, image: np.ndarray, labels: Sequence[int], keep_views: bool = False) -> SeedResult:
        keys, cams, views = self.cams(image, labels, keep_views)
        mask, scores = seed_from_cams(image, cams, keys, self.options)
        return SeedResult(mask=mask, keys=keys, cams=cams, scores=scores, views=views)


def build_seeder(
    preset: str = "vit_b16_voc",
    *,
    clip_weights: str | None = "openai",
    class_names: Sequence[str] | None = None,
    prompts: str | os.PathLike | PromptSet = "auto",
    options: SeedOptions = SeedOptions(),
    device: str = "cpu",
    dtype=None,
) -> ClipSeeder:
    """A seeder over the preset's CLIP towers: ``clip_weights`` "openai", a local file, or None (random, tests)."""
    from weakclip.model.clip import CLIPImageEncoder, CLIPTextEncoder, load_clip_weights

    cfg = get_config(preset, **({"class_names": tuple(class_names)} if class_names is not None else {}))
    torch.manual_seed(0)
    image_encoder = CLIPImageEncoder(dataclasses.replace(cfg, crop_size=cfg.pretrain_image_size))
    text_encoder = CLIPTextEncoder(dataclasses.replace(cfg, name_context_length=77, n_contexts=0))
    if clip_weights is not None:
        load_clip_weights(image_encoder, text_encoder, clip_weights, model_name=cfg.clip_model_name or "ViT-B-16")
    return ClipSeeder(image_encoder, text_encoder, cfg.class_names, prompts, options, device=device, dtype=dtype)


def make_seeds(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    ext: str = ".jpg",
    class_names: Sequence[str] | None = None,
    preset: str = "vit_b16_voc",
    clip_weights: str | None = "openai",
    prompts: str = "auto",
    device: str = "cpu",
    options: SeedOptions = SeedOptions(),
    seeder: ClipSeeder | None = None,
    save_scores: bool = False,
    palette: bool = True,
    overlays: int = 0,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    workers: int = 2,
    progress: bool = True,
) -> batch.Summary:
    """CLIP-ES seeds for ``images`` from image-level ``labels`` into ``out``; ``seeder`` replaces the built one."""
    if seeder is not None:
        options, class_names = seeder.options, seeder.class_names
    class_names = tuple(class_names or get_config(preset).class_names)
    if options.crf is not None:
        batch.require_pydensecrf("--crf clip_es needs pydensecrf (pip install pydensecrf2), or use --crf none")
    if clip_weights not in (None, "openai") and not Path(clip_weights).is_file():
        raise UsageError(f"--clip-weights {clip_weights}: no such file (or pass 'openai')")
    all_items = batch.read_inputs(images, image_root, ext)
    outputs = batch.Outputs(Path(out), save_scores, record="seeds_config.json")
    weights_file = clip_weights if clip_weights != "openai" else None
    batch.check_out_location(
        Path(out), images, all_items, outputs, {"--clip-weights": weights_file, "--labels": labels}
    )
    image_labels = load_labels(labels, num_classes=len(class_names))
    if missing := [it.name for it in all_items if it.name not in image_labels]:
        raise UsageError(f"{labels}: no image-level label for {len(missing)} image(s), e.g. {missing[:5]}")
    weights_id = clip_weights if weights_file is None else f"sha256:{file_sha256(weights_file, with_data=False)}"
    prompt_set = seeder.prompts if seeder is not None else resolve_prompts(class_names, prompts)
    settings: dict[str, Any] = dict(preset=preset, clip_weights=weights_id, class_names=class_names)
    settings |= dict(prompts=dataclasses.asdict(prompt_set), options=dataclasses.asdict(options))
    settings |= dict(labels_sha256=file_sha256(labels, with_data=False))
    settings |= dict(palette=bool(palette), save_scores=bool(save_scores))
    settings = json.loads(json.dumps(settings))  # tuples → lists: compares equal to what a resumed run reads back
    paths = {"images": images, "image_root": image_root, "ext": ext, "labels": labels, "out": out}
    record_args = {k: v and str(v) for k, v in paths.items()}
    record_args |= {"preset": preset, "clip_weights": clip_weights, "prompts": prompts, "device": device}
    samples = batch.overlay_names(all_items, overlays)

    def write(item: batch.Item, image: np.ndarray, keys: Any, cams: np.ndarray, seeder: ClipSeeder) -> None:
        mask, scores = seed_from_cams(image, cams, keys, seeder.options)
        full = np.zeros((len(class_names), *mask.shape), np.float16) if outputs.save_probs else None
        if full is not None:  # (K, H, W): background score, the labelled classes' CAMs, other rows 0
            full[0], full[keys] = scores[0], scores[1:]
        outputs.write(item.name, image, mask, full, palette, item.name in samples)

    def work(todo: list[batch.Item], skipped: int, lock: Any) -> tuple[int, list[tuple[str, str]]]:
        nonlocal seeder
        if seeder is None:
            if clip_weights is None:
                print("warning: --clip-weights none: random CLIP towers, the seeds are meaningless (tests only)")
            kw: dict[str, Any] = dict(class_names=class_names, prompts=prompt_set, device=device)
            seeder = build_seeder(preset, clip_weights=clip_weights, options=options, **kw)
        batch.write_record(outputs, settings, args=record_args)
        crf = options.crf is not None
        print(
            f"weakclip seeds: {clip_weights or 'random'} CLIP ({preset}), prompts {prompt_set.name} "
            f"({len(prompt_set.background)} background texts), views {len(options.scales) * (1 + options.flip)}, "
            f"box threshold {seeder.box_threshold}, crf {'clip_es' if crf else 'off'}, "
            f"ignore < {options.ignore_threshold if crf else '-'}, threads {torch.get_num_threads()}; "
            f"{len(todo)} image(s) to do, {skipped} already finished",
            flush=True,
        )
        with batch.BatchJob(len(todo), workers, "seeds", progress, 2 * max(workers, 1), lock) as job:
            for [(item, image)] in job.chunks(todo, 1):  # one image at a time
                try:
                    keys, cams, _ = seeder.cams(image, image_labels[item.name])
                except Exception as e:  # noqa: BLE001 - one image's failure is recorded, the run goes on
                    job.fail_compute(item, f"cams: {batch.one_line(e)}", "CAM computation", RuntimeFailure)
                    continue
                job.write(item, "crf/writing", write, item, image, keys, cams, seeder)
            job.collect(0)
        return job.done, job.failures

    return batch.run_batch(
        "weakclip seeds", all_items, outputs, settings, work, overwrite=overwrite, shard=shard, noun="seeds"
    )
