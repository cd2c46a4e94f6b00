from __future__ import annotations

import pytest
import torch

from dcam.core.errors import ConfigError
from dcam.training.attention import ChannelAttention, DCAMBlock, SpatialAttention


@pytest.mark.parametrize("variant", ["channel", "spatial", "channel+spatial"])
def test_block_keeps_shape_and_passes_gradients(variant: str) -> None:
    block = DCAMBlock(64, variant)
    x = torch.randn(2, 64, 16, 12, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in block.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    torch.testing.assert_close(y, x * block.weights(x))


def test_weight_shapes_and_ranges() -> None:
    x = torch.randn(3, 32, 8, 8)
    channel = ChannelAttention(32)
    spatial = SpatialAttention()
    assert channel(x).shape == (3, 32, 1, 1)
    assert spatial(x).shape == (3, 1, 8, 8)
    for w in (channel(x), spatial(x)):
        assert ((w > 0) & (w < 1)).all()
    # reduction ratio 8, no bias, shared MLP
    convs = [m for m in channel.mlp if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 32]
    assert all(c.bias is None for c in convs)
    assert spatial.conv.kernel_size == (7, 7)


def test_rejects_unknown_variant() -> None:
    with pytest.raises(ConfigError, match="channel"):
        DCAMBlock(8, "none")
