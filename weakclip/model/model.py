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

    forward(images (B, 3, H, W) normalised, H and W multiples of the patch size, text_embeddings=None)
    -> WeakCLIPOutput.  ``text_embeddings`` (K, E) may be passed precomputed (deployment); otherwise the prompt
    learner and the text tower run (training: gradients reach the contexts).
    """

    def __init__(
        self,
        *,
        config: WeakCLIPConfig,
        image_encoder: CLIPImageEncoder,
        text_encoder: CLIPTextEncoder,
        prompt: PromptLearner,
        adapter: PyramidAdapter,
        coattention: CoAttentionMatching,
        decoder: TextGuidedDecoder,
    ):
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.prompt = prompt
        self.adapter = adapter
        self.coattention = coattention
        self.decoder = decoder
        for tower in (self.image_encoder, self.text_encoder):
            tower.requires_grad_(False)

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
    return WeakCLIP(
        config=config,
        image_encoder=CLIPImageEncoder(config),
        text_encoder=CLIPTextEncoder(config),
        prompt=PromptLearner(config.class_names, config.n_contexts, config.text_width, config.name_context_length),
        adapter=PyramidAdapter(config.vision_width),
        coattention=CoAttentionMatching(
            config.embed_dim,
            config.coattn_width,
            config.coattn_heads,
            config.coattn_layers,
            config.coattn_mlp_ratio,
            config.coattn_dropout,
            config.residual_scale_init,
        ),
        decoder=TextGuidedDecoder(
            config.vision_width, config.num_classes, config.neck_channels, config.head_channels, config.head_dropout
        ),
    )


def build_model(preset: str, *, clip_weights: str | None = None, **overrides: Any) -> WeakCLIP:
    """Build WeakCLIP from a preset (``vit_b16_voc``, ``vit_b16_coco``, ``tiny``) plus config overrides.

    ``clip_weights``: None → random CLIP towers; ``"openai"`` → OpenAI weights through open_clip's download
    cache; a path → a local OpenAI TorchScript ``.pt``, a ``.safetensors`` or a tensor-only state dict.
    """
    config = get_config(preset, **overrides)
    model = build_from_config(config)
    if clip_weights is not None:
        name = config.clip_model_name or "ViT-B-16"
        load_clip_weights(model.image_encoder, model.text_encoder, clip_weights, model_name=name)
    return model


def parameter_table(model: WeakCLIP) -> list[tuple[str, int, int]]:
    """(component, total parameters, trainable parameters) per top-level part, plus a total row."""
    rows = []
    for name, module in model.named_children():
        total = sum(p.numel() for p in module.parameters())
        train = sum(p.numel() for p in module.parameters() if p.requires_grad)
        rows.append((name, total, train))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows
