"""Where the shipped license-clean teachers live: ResNet weights pretrained only on
formula-generated fractals (`dcam-teacher pretrain`), used by `dcam-train --teacher fractal`.

Paths only (no torch), so training can find them without importing the pretraining code.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED_WEIGHTS = {"resnet18": "fractal_resnet18.pt"}


def fractal_weights_path(backbone: str) -> Path:
    """Where the shipped fractal teacher of `backbone` lives (it may be absent)."""
    return WEIGHTS_DIR / SHIPPED_WEIGHTS.get(backbone, f"fractal_{backbone}.pt")
