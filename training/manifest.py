"""The JSON manifest: the only thing later stages (build, client) read from a training run.

It describes the deployed model (backbone, layers, input size and format, mean/std, map
combination, smoothing, score normalisation, thresholds) and how it came to be (DCAM reading,
losses, teacher source, data summary, metrics, versions).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision

from dcam.training.config import TrainConfig
from dcam.training.errors import DcamError
from dcam.training.model import IMAGENET_MEAN, IMAGENET_STD, LEVELS

MANIFEST_VERSION = 1


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def build_manifest(
    cfg: TrainConfig,
    channels: list[int],
    strides: list[int],
    teacher_source: dict,
    data_summary: dict,
    calibration: dict,
    metrics: dict,
    training: dict,
) -> dict:
    return {
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
        "anomaly_map": {
            "distance": "1 - cos over channels",
            "upsample": "bilinear",
            "combine": cfg.combine,
            "gaussian_sigma": cfg.sigma,
            "image_score": "max",
        },
        "normalization": {k: calibration[k] for k in ("method", "global", "per_category")},
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


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def read_manifest(run_dir: Path) -> dict:
    """Read and sanity-check a run's manifest.json."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise DcamError(f"{path} does not exist: is {run_dir} a dcam-train output folder?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DcamError(f"{path} is not valid JSON: {exc}") from exc
    for key in ("manifest_version", "backbone", "layers", "input", "anomaly_map", "normalization"):
        if key not in manifest:
            raise DcamError(f"{path} lacks the key {key!r}")
    if manifest["manifest_version"] != MANIFEST_VERSION:
        raise DcamError(
            f"{path} has manifest_version {manifest['manifest_version']}, "
            f"this dcam reads {MANIFEST_VERSION}"
        )
    return manifest
