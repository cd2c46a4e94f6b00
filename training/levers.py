"""Issue 23's training-side levers, each a TrainConfig setting and off by default (none measured
better than the default; benchmarks/README.md): the learning-rate schedule, augmentation of the
training goods, and the teacher's per-channel statistics that `--feature-norm channel`
standardises both sides by before the losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from dcam.core.errors import ConfigError
from dcam.nets.features import Normalize
from dcam.training.config import TrainConfig

# Seeds of the augmentation draws: apart from the shuffling's (seed * 100_003 + epoch).
AUGMENT_SEED_OFFSET = 50_000


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based) under cfg.lr_schedule."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def augment_generator(cfg: TrainConfig, epoch: int) -> torch.Generator:
    """The epoch's augmentation draws, reproducible per seed and epoch (so --resume repeats)."""
    return torch.Generator().manual_seed(cfg.seed * 100_003 + AUGMENT_SEED_OFFSET + epoch)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """A batch of ImageNet-normalised images, augmented per image.

    photometric: contrast around the normalisation mean times 0.9-1.1, and a brightness offset
    of up to +-10% of the pixel range (0.44 of the normalisation std). flip: horizontal and
    vertical flips, each with probability 1/2.
    """
    n = len(x)
    if kind == "photometric":
        gain = 1.0 + 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
        offset = 0.87 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
        return x * gain.to(x.device) + offset.to(x.device)
    if kind != "flip":
        raise ConfigError(f"unknown augmentation {kind!r}")
    flips = torch.rand(n, 2, generator=generator) < 0.5
    out = x.clone()
    for i, (horizontal, vertical) in enumerate(flips.tolist()):
        dims = [d for d, on in ((2, horizontal), (1, vertical)) if on]  # of one CHW image
        if dims:
            out[i] = x[i].flip(dims)
    return out


@torch.no_grad()
def channel_statistics(
    teacher: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level, the teacher's per-channel mean and standard deviation over every pixel of
    `images` (uint8 NHWC, as loaded), the std floored at the level's median: what
    feature_norm="channel" standardises both sides by."""
    normalize = Normalize().to(device)
    sums: list[torch.Tensor] = []
    squares: list[torch.Tensor] = []
    pixels: list[int] = []
    for start in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[start : start + batch_size]).to(device))
        feats = [f.double() for f in teacher(x)]
        if not sums:
            sums = [torch.zeros(f.shape[1], dtype=torch.float64, device=device) for f in feats]
            squares = [torch.zeros_like(v) for v in sums]
            pixels = [0] * len(feats)
        for i, f in enumerate(feats):
            sums[i] += f.sum(dim=(0, 2, 3))
            squares[i] += (f * f).sum(dim=(0, 2, 3))
            pixels[i] += f.shape[0] * f.shape[2] * f.shape[3]
    stats = []
    for total, square, n in zip(sums, squares, pixels, strict=True):
        mean = total / n
        std = (square / n - mean**2).clamp_min(0).sqrt()
        # Floored at the level's median: quiet (or dead, std 0) channels would otherwise scale a
        # student's stray output there by up to 1/eps and swamp the loss.
        std = std.clamp_min(float(std.median()))
        stats.append((mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)))
    return stats


def standardise(
    feats: Sequence[torch.Tensor], stats: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """(feature - mean) / std per channel and level."""
    return [(f - m) / s for f, (m, s) in zip(feats, stats, strict=True)]
