"""Teacher and student networks: a ResNet stem plus layers 1-3, and the student's DCAM readings.

The teacher is frozen and pretrained (ImageNet through torchvision, a local checkpoint, the shipped
FractalDB-pretrained weights, or an explicitly requested random init for offline tests); the
student has the same shape and starts random. `Student.forward` is exactly what gets deployed;
`Student.loss_pairs` is training-only.
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
from dcam.teacher.shipped import SHIPPED_TEACHERS, shipped_weights_path
from dcam.training.attention import DCAMBlock
from dcam.training.config import DCAM_MODES, TEACHER_SOURCES, check_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights from its cache, or downloaded where the user is online."""
    weights = getattr(torchvision.models, _BACKBONES[backbone][1]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # urllib raises several kinds when offline
        raise DcamError(
            f"could not load ImageNet weights for {backbone} ({exc.__class__.__name__}: {exc}). "
            "Offline, use the shipped license-clean teacher: --teacher formula. Or pass "
            f"--teacher-weights PATH (a torchvision checkpoint), or put {weights.url} into "
            f"torch's hub cache ({torch.hub.get_dir()}/checkpoints). For tests only: "
            "--teacher random"
        ) from exc


def shipped_state_dict(source: str, backbone: str) -> dict[str, torch.Tensor]:
    """A shipped formula-pretrained stem + layers 1-3, stored in FP16 and returned in FP32."""
    if backbone not in SHIPPED_TEACHERS[source]:
        raise DcamError(
            f"no shipped {source} teacher for {backbone}; shipped: "
            f"{sorted(SHIPPED_TEACHERS[source])}. Train one with `dcam-teacher pretrain "
            f"--backbone {backbone}` and pass its teacher.pt as --teacher-weights"
        )
    path = shipped_weights_path(source, backbone)
    if not path.is_file():
        raise DcamError(
            f"the shipped {source} teacher {path} is missing from this installation; reinstall "
            "dcam, or train one with `dcam-teacher pretrain` and pass its teacher.pt as "
            "--teacher-weights"
        )
    state = read_state_dict(path)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_teacher(backbone: str, source: str, weights_path: Path | None = None) -> FeatureExtractor:
    """Build the frozen teacher; never falls back to random weights on its own."""
    teacher = FeatureExtractor(backbone)
    if weights_path is not None:
        state = read_state_dict(weights_path)
    elif source == "imagenet":
        state = imagenet_state_dict(backbone)
    elif source in SHIPPED_TEACHERS:
        state = shipped_state_dict(source, backbone)
    elif source == "random":
        state = None
    else:
        raise DcamError(f"unknown teacher source {source!r}; choose one of {TEACHER_SOURCES}")
    if state is not None:
        load_backbone_weights(teacher, state, str(weights_path or source))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


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


class Student(nn.Module):
    """Same shape as the teacher, random init, with optional DCAM blocks on each level."""

    def __init__(self, backbone: str, channels: list[int], variant: str, mode: str) -> None:
        super().__init__()
        if mode not in DCAM_MODES:
            raise DcamError(f"unknown DCAM mode {mode!r}; choose one of {DCAM_MODES}")
        self.net = FeatureExtractor(backbone)
        self.mode = mode
        self.dcam = (
            None if variant == "none" else nn.ModuleList(DCAMBlock(c, variant) for c in channels)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Deployed features: the plain student, except for the inline control reading."""
        inline = self.dcam if self.mode == "inline" else None
        return self.net(x, between=inline)

    def loss_pairs(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor]
    ) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """Teacher/student feature lists the losses compare, per DCAM reading.

        side: teacher vs attended student. mask: the student's attention re-weights both, its
        weights rescaled to mean 1 so they cannot shrink to nothing, and the unmasked pair stays
        in the loss so the student cannot ignore what the mask hides. inline/none: plain pair.
        """
        if self.dcam is None or self.mode == "inline":
            return [(teacher, student)]
        if self.mode == "side":
            return [(teacher, [blk(s) for blk, s in zip(self.dcam, student, strict=True)])]
        weights = [blk.weights(s) for blk, s in zip(self.dcam, student, strict=True)]
        weights = [w / w.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6) for w in weights]
        masked_t = [t * w for t, w in zip(teacher, weights, strict=True)]
        masked_s = [s * w for s, w in zip(student, weights, strict=True)]
        return [(teacher, student), (masked_t, masked_s)]

    def deployable_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain backbone weights (no DCAM) unless the inline control keeps its blocks."""
        if self.mode == "inline" and self.dcam is not None:
            return dict(self.state_dict())
        return dict(self.net.state_dict())
