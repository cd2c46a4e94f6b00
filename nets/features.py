"""The ResNet feature extractor teacher and student share (stem plus layers 1-3), the image
normalisation folded into exported graphs, and strict loading of backbone weights.

Reads weight files (`read_state_dict`); writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from dcam.core.errors import DcamError
from dcam.core.names import LEVELS
from dcam.nets.choices import check_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Per backbone: torchvision's constructor and the name of its weights enum.
_BACKBONES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights"),
    "wide_resnet50_2": (torchvision.models.wide_resnet50_2, "Wide_ResNet50_2_Weights"),
}
_STEM = ("conv1", "bn1", "relu", "maxpool")


class FeatureExtractor(nn.Module):
    """ResNet stem + layer1..layer3 with torchvision's parameter names (layer4 and fc dropped)."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        check_backbone(backbone)
        net = _BACKBONES[backbone][0](weights=None)
        for name in (*_STEM, *LEVELS):
            self.add_module(name, getattr(net, name))

    @property
    def channels(self) -> list[int]:
        return [_out_channels(getattr(self, name)) for name in LEVELS]

    def forward(self, x: torch.Tensor, between: nn.ModuleList | None = None) -> list[torch.Tensor]:
        """Return the three level features; `between` blocks (inline DCAM) feed forward."""
        for name in _STEM:
            x = getattr(self, name)(x)
        features = []
        for i, name in enumerate(LEVELS):
            x = getattr(self, name)(x)
            if between is not None:
                x = between[i](x)
            features.append(x)
        return features


def _out_channels(layer: nn.Module) -> int:
    return [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


class Normalize(nn.Module):
    """UINT8 NHWC images in, ImageNet-normalised float NCHW out (folded into exported graphs)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT takes UINT8 only as a network input feeding a Cast (onnx-tensorrt
        # docs/operators.md: "UINT8 is only supported as network input or output tensor types").
        x = images.float().permute(0, 3, 1, 2)
        return (x - self.mean) / self.std


def imagenet_weights(backbone: str) -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet weights entry for `backbone` (its URL; nothing is downloaded)."""
    check_backbone(backbone)
    return getattr(torchvision.models, _BACKBONES[backbone][1]).IMAGENET1K_V1


@torch.no_grad()
def adapt_batchnorm(
    net: nn.Module, images: np.ndarray, batch_size: int, device: torch.device
) -> int:
    """AdaBN (Li et al., 2016): re-estimate every BatchNorm's running statistics on `images`.

    A teacher pretrained on other images (fractals, ImageNet) normalises this line's features
    with statistics of that other data; the training good images give the right ones. Only the
    statistics change (no weights, no labels, no test images). Returns how many images it saw.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches, not an exponential one
    normalize = Normalize().to(device)
    net.train()
    for start in range(0, len(images), batch_size):
        net(normalize(torch.from_numpy(images[start : start + batch_size]).to(device)))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.eval()
    return len(images)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file, loaded weights-only; clear errors when it is not."""
    if not Path(path).is_file():
        raise DcamError(f"weights {path} do not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DcamError(f"cannot read weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DcamError(f"{path} holds no state dict")
    return state


def load_backbone_weights(net: FeatureExtractor, state: dict, origin: str) -> None:
    """Load the stem and layers 1-3 from a full or partial backbone state dict, strictly."""
    wanted = set(net.state_dict())
    kept = {k: v for k, v in state.items() if k in wanted}
    missing = sorted(wanted - set(kept))
    if missing:
        raise DcamError(f"weights from {origin} lack {len(missing)} keys, e.g. {missing[:3]}")
    try:
        net.load_state_dict(kept, strict=True)
    except RuntimeError as exc:
        raise DcamError(f"weights from {origin} do not fit this backbone: {exc}") from exc
