"""Where the shipped license-clean teachers live: ResNet weights pretrained only on
formula-generated images (`dcam-teacher pretrain`), used by `dcam-train --teacher formula`
(the default offline teacher) and `--teacher fractal` (its predecessor, kept reproducible).

Paths only (no torch), so training can find them without importing the pretraining code.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
# Per shipped teacher source, the backbones it exists for; the file is `<source>_<backbone>.pt`
# beside a `.json` that records how it was pretrained.
SHIPPED_TEACHERS = {"formula": ("resnet18",), "fractal": ("resnet18",)}


def shipped_weights_path(source: str, backbone: str) -> Path:
    """Where the shipped teacher `source` of `backbone` lives (it may be absent)."""
    return WEIGHTS_DIR / f"{source}_{backbone}.pt"
