"""The backbones dcam builds, here and not beside the torch modules, so CLIs and configurations
read the choices without importing torch."""

from __future__ import annotations

from dcam.core.errors import ConfigError

BACKBONES = ("resnet18", "wide_resnet50_2")


def check_backbone(name: str) -> None:
    """Raise ConfigError naming the valid backbones unless `name` is one."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}")
