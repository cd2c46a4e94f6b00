"""The anomaly-map maths, written once: numpy only, no torch, no dcam imports.

Training's in-process reference and the Triton post-processing model both use this file (the build
copies it verbatim into the model repository, so a stock Triton container needs no dcam package).
It reads teacher and student feature maps (N, C, h, w) per level and writes (N, H, W) maps, image
scores, normalised scores and decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

COMBINE_MODES = ("sum", "product")
_EPS = 1e-8


def cosine_distance(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """Return 1 - cos over channels, (N, C, h, w) x2 -> (N, h, w), computed in float32.

    Float32 on purpose: squared norms of FP16 features overflow, so callers with half-precision
    features still get a stable map.
    """
    t = np.asarray(teacher, dtype=np.float32)
    s = np.asarray(student, dtype=np.float32)
    if t.shape != s.shape or t.ndim != 4:
        raise ValueError(f"teacher {t.shape} and student {s.shape} must both be (N, C, h, w)")
    dot = np.einsum("nchw,nchw->nhw", t, s)
    norms = np.sqrt(np.einsum("nchw,nchw->nhw", t, t) * np.einsum("nchw,nchw->nhw", s, s))
    return (1.0 - dot / np.maximum(norms, _EPS)).astype(np.float32)


@lru_cache(maxsize=32)
def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """Interpolation matrix (out, in) equal to torch's bilinear resize with align_corners=False.

    Resizing as two small matrix products is exact, fast, and needs no torch in the server.
    """
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat.astype(np.float32)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Upsample (N, h, w) maps to (N, H, W) exactly as torch's bilinear (align_corners=False)."""
    rows = bilinear_matrix(size[0], maps.shape[1])
    cols = bilinear_matrix(size[1], maps.shape[2])
    return np.einsum("Hh,nhw,Ww->nHW", rows, maps, cols, optimize=True).astype(np.float32)


@lru_cache(maxsize=32)
def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """Matrix (size, size) of a 1-D Gaussian blur with reflect padding (kernel radius 4 sigma)."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    mat = np.zeros((size, size), dtype=np.float64)
    for i in range(size):
        src = i + offsets
        # Reflect without repeating the edge pixel (numpy "reflect" / torch "reflect").
        for _ in range(4):
            src = np.where(src < 0, -src, src)
            src = np.where(src > size - 1, 2 * (size - 1) - src, src)
        np.add.at(mat[i], src, kernel)
    return mat.astype(np.float32)


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (N, H, W) maps; sigma <= 0 returns the maps unchanged."""
    if sigma <= 0:
        return maps
    rows = gaussian_matrix(maps.shape[1], float(sigma))
    cols = gaussian_matrix(maps.shape[2], float(sigma))
    return np.einsum("Hh,nhw,Ww->nHW", rows, maps, cols, optimize=True).astype(np.float32)


def anomaly_map(
    teacher_features: Sequence[np.ndarray],
    student_features: Sequence[np.ndarray],
    size: tuple[int, int],
    combine: str = "sum",
    sigma: float = 0.0,
) -> np.ndarray:
    """Per-level 1 - cos, upsampled to `size`, combined by sum or product, optionally smoothed."""
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    if len(teacher_features) != len(student_features) or not teacher_features:
        raise ValueError("need the same, non-zero number of teacher and student levels")
    total = None
    for t, s in zip(teacher_features, student_features, strict=True):
        level = resize_bilinear(cosine_distance(t, s), size)
        if total is None:
            total = level
        elif combine == "sum":
            total = total + level
        else:
            total = total * level
    return gaussian_smooth(total, sigma)


def image_scores(maps: np.ndarray) -> np.ndarray:
    """Image score = max of its anomaly map, (N, H, W) -> (N,)."""
    return maps.reshape(maps.shape[0], -1).max(axis=1)


def normalise_scores(scores: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Standardise raw scores with the statistics of held-out good images (z-scores)."""
    return ((np.asarray(scores, dtype=np.float32) - mean) / max(std, _EPS)).astype(np.float32)


def decide(normalised: np.ndarray, threshold: float) -> np.ndarray:
    """True where a normalised score exceeds the decision threshold."""
    return np.asarray(normalised) > threshold
