"""Assemble the manifest a training run writes; its format, reading and checks are
`dcam.core.manifest`.

It describes the deployed model (backbone, layers, input size and format, mean/std, the scoring
record with its calibrations) and how it came to be (DCAM reading, losses, teacher source,
data summary, metrics, versions).
"""

from __future__ import annotations

import torch

from dcam.core.manifest import MANIFEST_VERSION, Manifest
from dcam.core.names import LEVELS
from dcam.core.scoring import ScoringSpec
from dcam.core.versions import package_versions
from dcam.training.config import TrainConfig
from dcam.training.model import IMAGENET_MEAN, IMAGENET_STD

TRAINING_PACKAGES = ("torch", "torchvision", "numpy", "pillow")


def versions() -> dict:
    # torch's own string keeps the build's local label (e.g. +cu130) that its metadata drops.
    return {**package_versions(*TRAINING_PACKAGES), "torch": torch.__version__}


def build_manifest(
    cfg: TrainConfig,
    channels: list[int],
    strides: list[int],
    teacher_source: dict,
    data_summary: dict,
    scoring: ScoringSpec,
    metrics: dict,
    training: dict,
) -> Manifest:
    """The run's manifest, validated as every later stage will read it."""
    data = {
        "manifest_version": MANIFEST_VERSION,
        "files": {"teacher": "teacher.pt", "student": "student.pt"},
        "backbone": cfg.backbone,
        "layers": list(LEVELS),
        "feature_channels": channels,
        "feature_strides": strides,
        "input": {
            "size": [cfg.image_size, cfg.image_size],
            "dtype": "uint8",
            "layout": "NHWC",
            "channels": "RGB",
            "resize": "bilinear",
        },
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "scoring": scoring.to_dict(),
        "dcam": {
            "variant": cfg.dcam,
            "mode": cfg.dcam_mode,
            "in_deployed_student": cfg.dcam_mode == "inline" and cfg.dcam != "none",
        },
        "losses": list(cfg.losses),
        "temperature": cfg.temperature,
        "teacher": teacher_source,
        "data": data_summary,
        "metrics": metrics,
        "training": training,
        "versions": versions(),
    }
    return Manifest.from_dict(data, "the new manifest")
