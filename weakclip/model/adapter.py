"""Pyramid adapter: four ViT taps (B, D, h, w) → strides 4, 8, 16, 32."""

from __future__ import annotations

import torch
from torch import nn


class PyramidAdapter(nn.Module):
    """fpn1: GN → ConvT×2 → BN → GELU → ConvT×2 (stride 4); fpn2: GN → ConvT×2 (stride 8);
    fpn3: GN (stride 16); fpn4: GN → MaxPool 2 (stride 32).  Channels stay D."""

    def __init__(self, width: int):
        super().__init__()
        D = width

        def up() -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(D, D, kernel_size=2, stride=2)

        self.fpn1 = nn.Sequential(nn.GroupNorm(1, D), up(), nn.BatchNorm2d(D), nn.GELU(), up())
        self.fpn2 = nn.Sequential(nn.GroupNorm(1, D), up())
        self.fpn3 = nn.GroupNorm(1, D)
        self.fpn4 = nn.Sequential(nn.GroupNorm(1, D), nn.MaxPool2d(kernel_size=2, stride=2))

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """taps: 4 × (B, D, h, w) → [(B, D, 4h, 4w), (B, D, 2h, 2w), (B, D, h, w), (B, D, h/2, w/2)]."""
        return [op(t) for op, t in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), taps, strict=True)]
