"""Text-guided decoder: score map concatenated to every pyramid level → FPN neck → FPN head (mmseg semantics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """3×3 conv (no bias) → BN → ReLU; attribute names follow mmcv's ConvModule (conv, bn)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)


class TextGuidedDecoder(nn.Module):
    """forward(levels: 4 × (B, D, ·, ·) at strides 4…32, S (B, K, h, w)) -> logits (B, K, H/4, W/4).

    Neck: per level 1×1 lateral (D+K → C_n), top-down nearest-upsampled sum, 3×3 conv.  Head: level i gets
    max(1, i) conv blocks, each followed by ×2 bilinear upsampling for i > 0; sum at stride 4 → Dropout2d → 1×1 conv.
    """

    def __init__(self, in_channels: int, num_classes: int, neck_channels: int, head_channels: int, dropout: float):
        super().__init__()
        cin = in_channels + num_classes
        self.lateral_convs = nn.ModuleList([nn.Conv2d(cin, neck_channels, 1) for _ in range(4)])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(neck_channels, neck_channels, 3, padding=1) for _ in range(4)])
        self.scale_heads = nn.ModuleList()
        for i in range(4):
            blocks: list[nn.Module] = []
            for j in range(max(1, i)):
                blocks.append(ConvBNReLU(neck_channels if j == 0 else head_channels, head_channels))
                if i > 0:
                    blocks.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*blocks))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, levels: list[torch.Tensor], score: torch.Tensor) -> torch.Tensor:
        # Concatenate S, resized bilinearly with align_corners=True, to every level: (B, D + K, ·, ·).
        feats = [
            torch.cat([x, F.interpolate(score, size=x.shape[-2:], mode="bilinear", align_corners=True)], dim=1)
            for x in levels
        ]
        lat = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for i in range(3, 0, -1):  # top-down pathway
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat, strict=True)]
        out = self.scale_heads[0](outs[0])  # (B, C_h, H/4, W/4)
        for i in range(1, 4):
            y = self.scale_heads[i](outs[i])
            out = out + F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(out))  # (B, K, H/4, W/4)
