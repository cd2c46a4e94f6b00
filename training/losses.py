"""Distillation losses between teacher and student feature maps, summed over levels.

cosine: channel-wise cosine distance per pixel (DCAM's main term). kl: spatial KL divergence, per
channel a softmax over the H*W positions, KL(teacher || student). spatial_cosine: per channel,
cosine distance between the flattened maps. l2: STFPM's half squared L2 of channel-normalised
features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dcam.core.errors import ConfigError
from dcam.training.config import LOSSES


def channel_cosine_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of 1 - cos over channels."""
    return (1.0 - F.cosine_similarity(teacher, student, dim=1, eps=1e-8)).mean()


def spatial_kl_loss(
    teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) of per-channel spatial softmaxes, mean over channels, times T^2.

    The T^2 factor keeps the gradient scale comparable across temperatures (Hinton et al.).
    """
    log_t = F.log_softmax(teacher.flatten(2).float() / temperature, dim=-1)
    log_s = F.log_softmax(student.flatten(2).float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    return kl.mean() * temperature**2


def spatial_cosine_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over channels of 1 - cos between the flattened spatial maps."""
    return (1.0 - F.cosine_similarity(teacher.flatten(2), student.flatten(2), dim=2)).mean()


def stfpm_l2_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """STFPM: 0.5 * ||t/|t| - s/|s|||^2 over channels, mean over pixels."""
    diff = F.normalize(teacher, dim=1) - F.normalize(student, dim=1)
    return 0.5 * (diff**2).sum(dim=1).mean()


def check_losses(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in LOSSES]
    if unknown or not names:
        raise ConfigError(f"losses must be a non-empty subset of {LOSSES}, got {list(names)}")


def distillation_loss(
    teacher: Sequence[torch.Tensor],
    student: Sequence[torch.Tensor],
    losses: Sequence[str],
    temperature: float = 1.0,
    level_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Sum of the selected losses over all feature levels, level i weighted by level_weights[i]
    (1 each when None)."""
    check_losses(losses)
    weights = [1.0] * len(teacher) if level_weights is None else list(level_weights)
    if len(weights) != len(teacher):
        raise ConfigError(f"{len(weights)} level weights for {len(teacher)} feature levels")
    total = torch.zeros((), device=student[0].device)
    for t, s, weight in zip(teacher, student, weights, strict=True):
        t = t.float()
        s = s.float()
        for name in losses:
            if name == "cosine":
                term = channel_cosine_loss(t, s)
            elif name == "kl":
                term = spatial_kl_loss(t, s, temperature)
            elif name == "spatial_cosine":
                term = spatial_cosine_loss(t, s)
            else:
                term = stfpm_l2_loss(t, s)
            total = total + weight * term
    return total
