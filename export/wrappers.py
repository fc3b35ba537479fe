"""Every export-only module: thin wrappers around the *trained* WeakCLIP submodules (no copies, no monkey-patching).

Each wrapper rewrites only the glue the ONNX graphs need (SAM's ``SamOnnxModel`` pattern): flat tensor inputs and
outputs with stable names, and the text embeddings T (K, E) held as a constant buffer so no graph contains the prompt
learner or the text tower (SPEC §6, "text side precomputed").

Graph split (the names below are the ONNX input/output names)::

    encoder      image (B, 3, H, W)                        → tap0..tap3 (B, D, h, w), g (B, E), dense (B, E, h, w)
    coattention  g (B, E), dense (B, E, h, w)   [T inside] → score_map (B, K, h, w)
    decoder      tap0..tap3 (B, D, h, w), score_map        → logits (B, K, H/4, W/4)
    end_to_end   image (B, 3, H, W)             [T inside] → logits (B, K, H/4, W/4), score_map (B, K, h, w)

**Where the pyramid adapter lives: in the decoder graph.**  The encoder is the frozen CLIP image tower only and emits
the raw block taps at the token grid (4 × (B, D, h, w)); the adapter (GroupNorm, transposed convs, BN, max-pool) runs
at the start of ``decoder``.  This keeps the tensors crossing the encoder → decoder boundary small (the stride-4 level
is 16× larger than a tap) and leaves the encoder a pure ViT that TensorRT/ORT fuse as one transformer.

``CoAttentionPackedReference`` is the standard-ONNX decomposition of the custom co-attention node of the TensorRT
variant (see :mod:`weakclip.export.custom_op`): same inputs as the plugin (g, dense, text, packed weights), computed with the
plain reference :func:`weakclip.model.coattention.coattention_reference` from the unpacked weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weakclip.model.coattention import coattention_reference
from weakclip.model.model import WeakCLIP

ENCODER_OUTPUTS = ("tap0", "tap1", "tap2", "tap3", "g", "dense")
TAP_NAMES = ENCODER_OUTPUTS[:4]


class EncoderOnnx(nn.Module):
    """image (B, 3, H, W) → tap0..tap3 (B, D, h, w), g (B, E), dense (B, E, h, w); the CLIP image tower only."""

    def __init__(self, model: WeakCLIP):
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        taps, g, dense = self.image_encoder(image)
        return (*taps, g, dense)


class CoAttentionOnnx(nn.Module):
    """g (B, E), dense (B, E, h, w) → score_map S (B, K, h, w), with T (K, E) a constant buffer."""

    def __init__(self, model: WeakCLIP, text_embeddings: torch.Tensor):
        super().__init__()
        self.coattention = model.coattention
        self.register_buffer("text_embeddings", text_embeddings.detach().clone())  # T (K, E)

    def forward(self, g: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        S, _, _ = self.coattention(g, dense, self.text_embeddings)
        return S


class DecoderOnnx(nn.Module):
    """tap0..tap3 (B, D, h, w), score_map (B, K, h, w) → logits (B, K, H/4, W/4): pyramid adapter + decoder."""

    def __init__(self, model: WeakCLIP):
        super().__init__()
        self.adapter = model.adapter
        self.decoder = model.decoder

    def forward(
        self, tap0: torch.Tensor, tap1: torch.Tensor, tap2: torch.Tensor, tap3: torch.Tensor, score_map: torch.Tensor
    ) -> torch.Tensor:
        return self.decoder(self.adapter([tap0, tap1, tap2, tap3]), score_map)


class WeakCLIPOnnx(nn.Module):
    """image (B, 3, H, W) → logits (B, K, H/4, W/4), score_map (B, K, h, w); T (K, E) a constant buffer.

    The same composition as ``WeakCLIP.forward(images, text_embeddings=T)``, without the text side.
    """

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
    """Standard decomposition of the custom co-attention node: (g, dense, text, weights) → score_map.

    g (B, E), dense (B, E, h, w), text T (K, E), weights (P,) = the packed blob (layout: ``packed_weights`` of
    ``engines/csrc/plugin_names.json``, expanded per layer) → S (B, K, h, w).  The blob is sliced back into the
    state-dict tensors and fed to :func:`weakclip.model.coattention.coattention_reference` (explicit attention, no dropout),
    so the decomposition depends on nothing but the node's inputs and attributes.
    """

    def __init__(self, layout: Sequence[tuple[str, tuple[int, ...]]], *, heads: int, layers: int):
        super().__init__()
        self.layout = [(name, tuple(int(s) for s in shape)) for name, shape in layout]
        self.heads = heads
        self.layers = layers

    def forward(self, g: torch.Tensor, dense: torch.Tensor, text: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        sd: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape in self.layout:
            n = 1
            for s in shape:
                n *= s
            sd[name] = weights[offset : offset + n].reshape(shape)
            offset += n
        return coattention_reference(sd, g, dense, text, heads=self.heads, layers=self.layers)
