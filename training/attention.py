"""DCAM blocks: CBAM-style channel and spatial attention for the student's feature levels.

They exist only while training (except for the `inline` control reading): the deployed student is
the plain backbone, so serving costs the same as STFPM's student.
"""

from __future__ import annotations

import torch
from torch import nn

from dcam.core.errors import ConfigError
from dcam.training.config import DCAM_VARIANTS


class ChannelAttention(nn.Module):
    """Per-channel weights from average- and max-pooled descriptors through a shared MLP."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(torch.mean(x, dim=(2, 3), keepdim=True))
        peak = self.mlp(torch.amax(x, dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + peak)  # (N, C, 1, 1)


class SpatialAttention(nn.Module):
    """Per-position weights from channel-wise mean and max maps through a 7x7 convolution."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))  # (N, 1, H, W)


class DCAMBlock(nn.Module):
    """CBAM ordering: channel attention first, then spatial attention on the re-weighted map."""

    def __init__(self, channels: int, variant: str, reduction: int = 8) -> None:
        super().__init__()
        if variant not in DCAM_VARIANTS or variant == "none":
            raise ConfigError(f"DCAM variant must be one of {DCAM_VARIANTS[1:]}, got {variant!r}")
        self.channel = ChannelAttention(channels, reduction) if "channel" in variant else None
        self.spatial = SpatialAttention() if "spatial" in variant else None

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights broadcastable to x, such that forward(x) == x * weights(x)."""
        weights = torch.ones_like(x[:, :1, :1, :1])
        if self.channel is not None:
            weights = self.channel(x)
        if self.spatial is not None:
            weights = weights * self.spatial(x * weights)
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)
