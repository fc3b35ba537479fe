"""The WeakCLIP composer and its builder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from weakclip.model.adapter import PyramidAdapter
from weakclip.model.clip import CLIPImageEncoder, CLIPTextEncoder, load_clip_weights
from weakclip.model.coattention import CoAttentionMatching
from weakclip.model.config import WeakCLIPConfig, get_config
from weakclip.model.decoder import TextGuidedDecoder
from weakclip.model.prompts import PromptLearner


@dataclass
class WeakCLIPOutput:
    logits: torch.Tensor  # (B, K, H/4, W/4) segmentation logits
    score_map: torch.Tensor  # (B, K, H/16, W/16) text-to-pixel cosine scores S in [-1, 1]


class WeakCLIP(nn.Module):
    """CLIP towers (frozen) + learnable prompt + pyramid adapter + co-attention matching + text-guided decoder.

    forward(images (B, 3, H, W) normalised, H, W multiples of the patch, text_embeddings=None) -> WeakCLIPOutput;
    precomputed ``text_embeddings`` (K, E) skip the prompt learner and text tower (whose gradients reach the contexts).
    """

    def __init__(self, config: WeakCLIPConfig):
        super().__init__()
        c = self.config = config
        self.image_encoder = CLIPImageEncoder(c).requires_grad_(False)
        self.text_encoder = CLIPTextEncoder(c).requires_grad_(False)
        self.prompt = PromptLearner(c.class_names, c.n_contexts, c.text_width, c.name_context_length)
        self.adapter = PyramidAdapter(c.vision_width)
        coattn = (c.coattn_width, c.coattn_heads, c.coattn_layers, c.coattn_mlp_ratio, c.coattn_dropout)
        self.coattention = CoAttentionMatching(c.embed_dim, *coattn, c.residual_scale_init)
        self.decoder = TextGuidedDecoder(
            c.vision_width, c.num_classes, c.neck_channels, c.head_channels, c.head_dropout
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.class_names)

    def text_embeddings(self) -> torch.Tensor:
        """T (K, E): prompt learner + text tower; compute once for export/inference."""
        prompts, eot = self.prompt(self.text_encoder.token_embedding)
        return self.text_encoder(prompts, eot)

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor | None = None) -> WeakCLIPOutput:
        taps, g, dense = self.image_encoder(images)
        T = self.text_embeddings() if text_embeddings is None else text_embeddings
        S, _, _ = self.coattention(g, dense, T)  # (B, K, h, w)
        logits = self.decoder(self.adapter(taps), S)
        return WeakCLIPOutput(logits=logits, score_map=S)


def build_from_config(config: WeakCLIPConfig) -> WeakCLIP:
    """Random-init WeakCLIP for ``config`` (no weight loading)."""
    return WeakCLIP(config)


def build_model(preset: str, *, clip_weights: str | None = None, **overrides: Any) -> WeakCLIP:
    """WeakCLIP from a preset plus config overrides; ``clip_weights``: None (random towers), ``"openai"`` (through
    open_clip's download cache) or a local OpenAI ``.pt``, ``.safetensors`` or tensor-only state dict."""
    model = WeakCLIP(get_config(preset, **overrides))
    if clip_weights is not None:
        name = model.config.clip_model_name or "ViT-B-16"
        load_clip_weights(model.image_encoder, model.text_encoder, clip_weights, model_name=name)
    return model


def parameter_table(model: WeakCLIP) -> list[tuple[str, int, int]]:
    """(component, total parameters, trainable parameters) per top-level part, plus a total row."""
    rows = [
        (name, sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.parameters() if p.requires_grad))
        for name, m in model.named_children()
    ]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows
