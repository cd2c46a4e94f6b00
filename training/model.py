"""The student network: the shared ResNet feature extractor plus the student's DCAM readings.

The frozen teacher comes from `dcam.teacher.sources` (ImageNet through torchvision, a local
checkpoint, the shipped formula-pretrained weights, or an explicitly requested random init for
offline tests); the student has the same shape (`dcam.nets.features`) and starts random.
`Student.forward` is exactly what gets deployed; `Student.loss_pairs` is training-only.
"""

from __future__ import annotations

import torch
from torch import nn

from dcam.core.errors import DcamError
from dcam.nets.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    Normalize,
    adapt_batchnorm,
)
from dcam.teacher.sources import load_teacher
from dcam.training.attention import DCAMBlock
from dcam.training.config import DCAM_MODES

# The training stage's modules import these from here; they live in dcam.nets and dcam.teacher.
__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FeatureExtractor",
    "Normalize",
    "Student",
    "adapt_batchnorm",
    "load_teacher",
]


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
