"""Which torch device a stage runs on, chosen the same way by pretraining and training."""

from __future__ import annotations

import torch

from dcam.core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """auto: CUDA where present, else CPU; an explicit 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)
