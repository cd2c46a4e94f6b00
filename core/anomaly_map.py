"""The anomaly-map maths, written once: numpy, torch optional, nothing else from dcam.

`scoring.py` builds the scoring rule on it; training's evaluation, `verify`, the fused ONNX graph,
the Triton post-processing model and the benchmarks all go through that rule (the build copies
both files into the model repository, so a stock Triton container needs no dcam package). It
reads teacher and student feature maps (N, C, h, w) per level and writes (N, H, W) maps and
image scores. The functions accept numpy arrays or torch tensors (CPU or GPU, and traceable
into ONNX); resizing and smoothing are matrix products with matrices built here in numpy, so
every path computes the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

if __package__:  # imported as dcam.core.anomaly_map
    from dcam.core.errors import InputError
else:  # a copy beside a Triton model, which needs no dcam package

    class InputError(ValueError):  # type: ignore[no-redef]
        """Arrays of the wrong shape or kind."""


COMBINE_MODES = ("sum", "product")
# Above FP16's smallest subnormal (6e-8), so the clamps also hold in an FP16 engine.
_EPS = 1e-6


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _float32(x):
    return x.float() if _is_torch(x) else np.asarray(x, dtype=np.float32)


@lru_cache(maxsize=256)
def _numpy_matrix(build, args: tuple, transpose: bool) -> np.ndarray:
    matrix = build(*args)
    return np.ascontiguousarray(matrix.T) if transpose else matrix


@lru_cache(maxsize=256)
def _torch_matrix(build, args: tuple, transpose: bool, device: str):
    """Built and copied to `device` once: no host-to-device copy per request, and none inside a
    CUDA-graph capture (where a copy from pageable memory fails)."""
    import torch

    return torch.as_tensor(_numpy_matrix(build, args, transpose), device=device)


def _matrix(x, build, *args, transpose: bool = False):
    """The constant build(*args) as the same kind of array as x (a tensor on x's device)."""
    if _is_torch(x):
        return _torch_matrix(build, args, transpose, str(x.device))
    return _numpy_matrix(build, args, transpose)


def _unit(x):
    """x / |x| over channels (axis 1), without squaring large values.

    Each vector is first divided by its largest magnitude, so no intermediate exceeds the channel
    count: overflow-safe in FP16, where sqrt(|t|^2 * |s|^2) passes 65504 for 256 channels of
    magnitude ~4. Cosine is scale-invariant, so the result is the same.
    """
    if _is_torch(x):
        y = x / x.abs().amax(1, keepdim=True).clamp_min(_EPS)
        return y / (y * y).sum(1, keepdim=True).sqrt().clamp_min(_EPS)
    y = x / np.maximum(np.abs(x).max(1, keepdims=True), _EPS)
    return y / np.maximum(np.sqrt((y * y).sum(1, keepdims=True)), _EPS)


def cosine_distance(teacher, student, keep_dtype: bool = False):
    """Return 1 - cos over channels, (N, C, h, w) x2 -> (N, h, w).

    Computed in float32 unless keep_dtype (then in the inputs' precision, as an FP16 engine
    computes the exported graph); overflow-safe either way (see `_unit`).
    """
    t, s = (teacher, student) if keep_dtype else (_float32(teacher), _float32(student))
    if tuple(t.shape) != tuple(s.shape) or t.ndim != 4:
        raise InputError(
            f"teacher {tuple(t.shape)} and student {tuple(s.shape)} must both be (N, C, h, w)"
        )
    return 1.0 - (_unit(t) * _unit(s)).sum(1)


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


def resize_bilinear(maps, size: tuple[int, int]):
    """Upsample (N, h, w) maps to (N, H, W) exactly as torch's bilinear (align_corners=False)."""
    rows = _matrix(maps, bilinear_matrix, int(size[0]), int(maps.shape[1]))
    cols = _matrix(maps, bilinear_matrix, int(size[1]), int(maps.shape[2]), transpose=True)
    return rows @ maps @ cols


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


def gaussian_smooth(maps, sigma: float):
    """Separable Gaussian blur of (N, H, W) maps; sigma <= 0 returns the maps unchanged."""
    if sigma <= 0:
        return maps
    rows = _matrix(maps, gaussian_matrix, int(maps.shape[1]), float(sigma))
    cols = _matrix(maps, gaussian_matrix, int(maps.shape[2]), float(sigma), transpose=True)
    return rows @ maps @ cols


def anomaly_map(
    teacher_features: Sequence,
    student_features: Sequence,
    size: tuple[int, int],
    combine: str = "sum",
    sigma: float = 0.0,
):
    """Per-level 1 - cos, upsampled to `size`, combined by sum or product, optionally smoothed."""
    if combine not in COMBINE_MODES:
        raise InputError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    if len(teacher_features) != len(student_features) or not teacher_features:
        raise InputError("need the same, non-zero number of teacher and student levels")
    if combine == "sum" and sigma > 0:
        # Resizing and smoothing are both linear, so for a sum the blur folds into each level's
        # resize matrices: the same map for a fraction of the work (no dense 256x256 products).
        return sum(
            _resize_and_smooth(cosine_distance(t, s), size, sigma)
            for t, s in zip(teacher_features, student_features, strict=True)
        )
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


@lru_cache(maxsize=64)
def _smoothed_resize_matrix(out_size: int, in_size: int, sigma: float) -> np.ndarray:
    return gaussian_matrix(out_size, sigma) @ bilinear_matrix(out_size, in_size)


def _resize_and_smooth(maps, size: tuple[int, int], sigma: float):
    """gaussian_smooth(resize_bilinear(maps, size), sigma) with pre-multiplied matrices."""
    rows = _matrix(maps, _smoothed_resize_matrix, int(size[0]), int(maps.shape[1]), float(sigma))
    cols = _matrix(
        maps,
        _smoothed_resize_matrix,
        int(size[1]),
        int(maps.shape[2]),
        float(sigma),
        transpose=True,
    )
    return rows @ maps @ cols


def image_scores(maps):
    """Image score = max of its anomaly map, (N, H, W) -> (N,)."""
    flat = maps.reshape(maps.shape[0], -1)
    return flat.amax(1) if _is_torch(flat) else flat.max(axis=1)
