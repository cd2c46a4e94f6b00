from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcam.core.errors import ConfigError
from dcam.nets.features import Normalize
from dcam.teacher.sources import load_teacher
from dcam.training.levers import channel_statistics, standardise
from dcam.training.losses import (
    channel_cosine_loss,
    distillation_loss,
    spatial_cosine_loss,
    spatial_kl_loss,
    stfpm_l2_loss,
)


def _pixels(*vectors: list[float]) -> torch.Tensor:
    """(1, C, 1, P) tensor whose P pixels hold the given channel vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, len(vectors[0]), 1, -1)


def test_channel_cosine_by_hand() -> None:
    t = _pixels([1, 0], [1, 0], [3, 0])
    s = _pixels([0, 1], [1, 1], [2, 0])
    expected = ((1 - 0) + (1 - 1 / math.sqrt(2)) + (1 - 1)) / 3
    assert channel_cosine_loss(t, s).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_spatial_kl_by_hand(temperature: float) -> None:
    t = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    s = torch.zeros(1, 1, 1, 2)
    a = math.exp(math.log(3.0) / temperature)
    p = [1 / (1 + a), a / (1 + a)]
    expected = sum(pi * math.log(pi / 0.5) for pi in p) * temperature**2
    assert spatial_kl_loss(t, s, temperature).item() == pytest.approx(expected, rel=1e-5)
    assert spatial_kl_loss(t, t.clone(), temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_spatial_cosine_by_hand() -> None:
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(1, 2, 1, 2)  # channel 0: [1,0]; 1: [1,1]
    s = torch.tensor([[0.0, 1.0], [2.0, 2.0]]).view(1, 2, 1, 2)
    assert spatial_cosine_loss(t, s).item() == pytest.approx((1.0 + 0.0) / 2, abs=1e-6)


def test_stfpm_l2_by_hand() -> None:
    t = _pixels([2, 0], [1, 0])
    s = _pixels([0, 5], [4, 0])
    # orthogonal unit vectors: 0.5 * 2 = 1; equal directions: 0
    assert stfpm_l2_loss(t, s).item() == pytest.approx(0.5, abs=1e-6)


def test_distillation_sums_levels_and_losses() -> None:
    t = [_pixels([1, 0]), _pixels([1, 0], [0, 1])]
    s = [_pixels([0, 1]), _pixels([1, 0], [1, 0])]
    expected = 1.0 + 0.5 + 1.0 + 0.5  # cosine + l2 on each level
    got = distillation_loss(t, s, ["cosine", "l2"])
    assert got.item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ConfigError, match="losses"):
        distillation_loss(t, s, ["nope"])


def test_level_weights_scale_each_level() -> None:
    t = [_pixels([1, 0]), _pixels([1, 0], [0, 1])]
    s = [_pixels([0, 1]), _pixels([1, 0], [1, 0])]
    got = distillation_loss(t, s, ["cosine"], level_weights=[2.0, 0.5])
    assert got.item() == pytest.approx(2.0 * 1.0 + 0.5 * 0.5, abs=1e-6)
    with pytest.raises(ConfigError, match="level weights"):
        distillation_loss(t, s, ["cosine"], level_weights=[1.0])


def test_channel_statistics_are_the_teachers_per_channel_moments() -> None:
    torch.manual_seed(0)
    teacher = load_teacher("resnet18", "random").eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    stats = channel_statistics(teacher, images, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        feats = teacher(Normalize()(torch.from_numpy(images)))
    for (mean, std), f in zip(stats, feats, strict=True):
        values = f.double().transpose(0, 1).flatten(1)  # channel x every pixel of every image
        assert torch.allclose(mean.flatten().double(), values.mean(1), atol=1e-5)
        floor = values.std(1, correction=0).median()
        expected = values.std(1, correction=0).clamp_min(floor)
        assert torch.allclose(std.flatten().double(), expected, atol=1e-4)
        unit = standardise([f], [(mean, std)])[0].double().transpose(0, 1).flatten(1)
        assert torch.allclose(unit.mean(1), torch.zeros(len(unit), dtype=torch.float64), atol=1e-4)
