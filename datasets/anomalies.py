"""Synthetic anomalies made from good images, for calibrating without any real defect.

CutPaste (Li et al., CVPR 2021): a rectangle cut from another good image of the same product (or
the image itself), its brightness and colour shifted, pasted at another place. Training scores
them with the trained model to estimate the detection rate at the calibrated threshold and,
in the `f1` calibration mode, to pick the threshold. numpy only; deterministic by seed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def _box(rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
    """A patch of 2-10% of the image area, aspect ratio 0.3 to 3.3 (CutPaste's ranges)."""
    area = rng.uniform(0.02, 0.10) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    ph = int(np.clip(np.sqrt(area * aspect), 4, h - 1))
    pw = int(np.clip(np.sqrt(area / aspect), 4, w - 1))
    return ph, pw


def cut_paste(images: np.ndarray, products: Sequence[str], seed: int = 0) -> np.ndarray:
    """One synthetic anomaly per good image (N, H, W, 3) uint8, donors from the same product."""
    rng = np.random.default_rng(seed)
    donors: dict[str, list[int]] = defaultdict(list)
    for i, product in enumerate(products):
        donors[product].append(i)
    out = images.copy()
    _, h, w, _ = images.shape
    for i, product in enumerate(products):
        j = int(rng.choice(donors[product]))
        ph, pw = _box(rng, h, w)
        sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        dy, dx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        patch = images[j, sy : sy + ph, sx : sx + pw].astype(np.float32)
        patch = patch * rng.uniform(0.6, 1.4) + rng.uniform(-30, 30, size=3)
        out[i, dy : dy + ph, dx : dx + pw] = np.clip(patch, 0, 255).astype(np.uint8)
    return out
