"""Export-only wrappers around the trained WeakCLIP submodules: flat, named tensor inputs/outputs and the text
embeddings T (K, E) as a constant buffer (no graph holds the prompt learner or the text tower)::

    encoder      image (B, 3, H, W)                        → tap0..tap3 (B, D, h, w), g (B, E), dense (B, E, h, w)
    coattention  g (B, E), dense (B, E, h, w)   [T inside] → score_map (B, K, h, w)
    decoder      tap0..tap3 (B, D, h, w), score_map        → logits (B, K, H/4, W/4)
    end_to_end   image (B, 3, H, W)             [T inside] → logits (B, K, H/4, W/4), score_map (B, K, h, w)

The pyramid adapter starts the decoder graph, so the encoder → decoder tensors stay at the token grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from weakclip.model.coattention import coattention_reference
from weakclip.model.model import WeakCLIP

ENCODER_OUTPUTS = ("tap0", "tap1", "tap2", "tap3", "g", "dense")
TAP_NAMES = ENCODER_OUTPUTS[:4]


class EncoderOnnx(nn.Module):
    def __init__(self, model: WeakCLIP):
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        taps, g, dense = self.image_encoder(image)
        return (*taps, g, dense)


class CoAttentionOnnx(nn.Module):
    def __init__(self, model: WeakCLIP, text_embeddings: torch.Tensor):
        super().__init__()
        self.coattention = model.coattention
        self.register_buffer("text_embeddings", text_embeddings.detach().clone())  # T (K, E)

    def forward(self, g: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        S, _, _ = self.coattention(g, dense, self.text_embeddings)
        return S


class DecoderOnnx(nn.Module):
    def __init__(self, model: WeakCLIP):
        super().__init__()
        self.adapter = model.adapter
        self.decoder = model.decoder

    def forward(
        self, tap0: torch.Tensor, tap1: torch.Tensor, tap2: torch.Tensor, tap3: torch.Tensor, score_map: torch.Tensor
    ) -> torch.Tensor:
        return self.decoder(self.adapter([tap0, tap1, tap2, tap3]), score_map)


class WeakCLIPOnnx(nn.Module):
    """image → logits, score_map: ``WeakCLIP.forward(images, text_embeddings=T)`` without the text side."""

    def __init__(self, model: WeakCLIP, text_embeddings: torch.Tensor):
        super().__init__()
        self.image_encoder = model.image_encoder
        self.coattention = model.coattention
        self.adapter = model.adapter
        self.decoder = model.decoder
        self.register_buffer("text_embeddings", text_embeddings.detach().clone())  # T (K, E)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        taps, g, dense = self.image_encoder(image)
        S, _, _ = self.coattention(g, dense, self.text_embeddings)  # (B, K, h, w)
        return self.decoder(self.adapter(taps), S), S


class CoAttentionPackedReference(nn.Module):
    """Standard decomposition of the custom co-attention node: (g, dense, text, weights (P,)) → score_map, the blob
    sliced back into the state-dict tensors of :func:`coattention_reference`."""

    def __init__(self, layout: Sequence[tuple[str, tuple[int, ...]]], *, heads: int, layers: int):
        super().__init__()
        self.layout = [(name, tuple(int(s) for s in shape)) for name, shape in layout]
        self.heads = heads
        self.layers = layers

    def forward(self, g: torch.Tensor, dense: torch.Tensor, text: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ends = itertools.accumulate(math.prod(shape) for _, shape in self.layout)
        sd = {n: weights[e - math.prod(s) : e].reshape(s) for (n, s), e in zip(self.layout, ends, strict=True)}
        return coattention_reference(sd, g, dense, text, heads=self.heads, layers=self.layers)
