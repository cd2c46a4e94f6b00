"""Deterministic synthetic "production line" anomaly-detection data in the MVTec AD layout.

Why: demos, tests and an accuracy benchmark need data that is free to redistribute, quick
to make and exactly reproducible, yet not trivially separable. Normal images therefore vary
(placement jitter, lighting gradients, colour drift, sensor noise, random textures) and
defects range from faint to obvious and from a few pixels to a few percent of the image.

Layout written by :func:`generate_dataset` (same as MVTec AD)::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect_kind>/000.png
    root/<category>/ground_truth/<defect_kind>/000_mask.png   (L mode, 0/255)

Every image draws from its own generator seeded by (seed, category, split, index), so a
category's files do not depend on which other categories or how many images are generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from dcam.core.errors import ConfigError, OutputExistsError
from dcam.core.files import write_json_atomic
from dcam.datasets import synthetic_shapes as shapes

CATEGORIES: tuple[str, ...] = (
    "carpet",
    "grid",
    "wood",
    "bottle",
    "nut",
    "capsule",
    "transistor",
)
"""All category names: the first three are textures, the rest are objects."""

DEFECT_KINDS: tuple[str, ...] = (
    "scratch",
    "hole",
    "stain",
    "missing",
    "contamination",
    "deformation",
)
"""All defect kinds; each category uses the subset in :data:`CATEGORY_DEFECTS`."""

CATEGORY_DEFECTS: dict[str, tuple[str, ...]] = {
    "carpet": ("scratch", "hole", "stain", "contamination", "deformation"),
    "grid": ("scratch", "stain", "missing", "contamination", "deformation"),
    "wood": ("scratch", "hole", "stain", "contamination", "deformation"),
    "bottle": ("scratch", "hole", "stain", "missing", "contamination"),
    "nut": ("scratch", "hole", "stain", "missing", "deformation"),
    "capsule": ("scratch", "hole", "stain", "missing", "deformation"),
    "transistor": ("scratch", "stain", "missing", "contamination", "deformation"),
}
"""Defect kinds that make physical sense per category (e.g. "missing" needs a removable part)."""

_SPLITS = {"train": 0, "test_good": 1, "test_defect": 2}
_MIN_SIZE = 32
_MAX_TRIES = 12


def _check_category(category: str) -> int:
    """Index of a category in :data:`CATEGORIES`; ConfigError naming the valid ones."""
    if category not in CATEGORIES:
        raise ConfigError(f"unknown category {category!r}; valid: {', '.join(CATEGORIES)}")
    return CATEGORIES.index(category)


def _check_kind(category: str, kind: str) -> int:
    """Index of a defect kind; ConfigError if unknown or not used by this category."""
    if kind not in DEFECT_KINDS:
        raise ConfigError(f"unknown defect kind {kind!r}; valid: {', '.join(DEFECT_KINDS)}")
    if kind not in CATEGORY_DEFECTS[category]:
        valid = ", ".join(CATEGORY_DEFECTS[category])
        raise ConfigError(f"defect kind {kind!r} is not used for {category!r}; valid: {valid}")
    return DEFECT_KINDS.index(kind)


def _check_size(size: int) -> None:
    """Reject sizes at which the structures would alias away."""
    if size < _MIN_SIZE:
        raise ConfigError(f"size must be at least {_MIN_SIZE} pixels, got {size}")


def _sensor(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply lighting gradient, gain/white-balance drift and pixel noise, then quantise.

    Done identically for good and defective images so only the defect tells them apart.
    """
    s = img.shape[0]
    x, y = shapes.coords(s)
    ang = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.0, 0.16) * (np.cos(ang) * x + np.sin(ang) * y)
    gain = (rng.uniform(0.94, 1.06) * (1 + rng.uniform(-0.02, 0.02, 3))).astype(np.float32)
    out = img * (light[..., None] * gain)
    out = out + rng.uniform(0.006, 0.014) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def _change_mask(before: np.ndarray, after: np.ndarray, support: np.ndarray | None) -> np.ndarray:
    """Mask of the region a defect visibly changed (closed and hole-filled like MVTec masks)."""
    diff = np.abs(after - before).max(axis=-1)
    changed = diff > max(0.02, 0.15 * float(diff.max()))
    if support is not None:
        changed &= support
    closed = ndi.binary_closing(changed, iterations=2) | changed
    return ndi.binary_fill_holes(closed)


def render_good(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one defect-free image (HxWx3 uint8) of a category.

    Args:
        category: One of :data:`CATEGORIES`.
        size: Side length in pixels (at least 32).
        rng: Source of all randomness, so the image is reproducible from its seed.
    """
    _check_category(category)
    _check_size(size)
    scene = shapes.RENDERERS[category](size, rng)
    return _sensor(scene.img, rng)


def render_defect(
    category: str, kind: str, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render one defective image and its ground-truth mask.

    The defect is drawn again (from the same generator) until its visible footprint is
    between ~0.05% and 7% of the image, so masks are never empty or swamping.

    Args:
        category: One of :data:`CATEGORIES`.
        kind: One of ``CATEGORY_DEFECTS[category]``.
        size: Side length in pixels (at least 32).
        rng: Source of all randomness.

    Returns:
        ``(image, mask)``: HxWx3 uint8 image and HxW bool mask (non-empty).
    """
    _check_category(category)
    _check_kind(category, kind)
    _check_size(size)
    scene = shapes.RENDERERS[category](size, rng)
    lo, hi = max(3, int(0.0005 * size * size)), int(0.07 * size * size)
    best: tuple[np.ndarray, np.ndarray] | None = None
    for _ in range(_MAX_TRIES):
        img, support = shapes.DEFECTS[kind](scene, rng)
        mask = _change_mask(scene.img, img, support)
        area = int(mask.sum())
        if lo <= area <= hi:
            best = (img, mask)
            break
        if area > 0 and (best is None or area >= lo):
            best = (img, mask)
    if best is None:  # practically unreachable; a plain hole always changes pixels
        img, _ = shapes.hole(scene, rng)
        best = (img, _change_mask(scene.img, img, None))
    img, mask = best
    return _sensor(img, rng), mask


def _save(path: Path, array: np.ndarray) -> None:
    """Write a PNG (fast zlib level, no metadata) so equal arrays give byte-identical files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def generate_dataset(
    root: Path,
    categories: Sequence[str] | None = None,
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_per_defect: int = 4,
    size: int = 256,
    seed: int = 0,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """Write a synthetic dataset in the MVTec AD layout, with `dataset.json`; return its summary.

    Args:
        root: Output folder; ``root/<category>/...`` is created (existing files are
            overwritten, extra ones are left alone).
        categories: Subset of :data:`CATEGORIES` (all when None).
        n_train: Good training images per category.
        n_test_good: Good test images per category.
        n_test_per_defect: Test images per defect kind used by a category.
        size: Side length in pixels.
        seed: Non-negative base seed; same seed gives byte-identical files.
        progress: Show a tqdm progress bar.
        force: Write into a folder that is not empty (otherwise OutputExistsError).

    Returns:
        ``{"seed", "size", "categories": {cat: {"train", "test_good", "test_defect": {kind: n}}}}``
    """
    cats = list(CATEGORIES if categories is None else categories)
    for cat in cats:
        _check_category(cat)
    _check_size(size)
    if min(n_train, n_test_good, n_test_per_defect) < 0 or seed < 0:
        raise ConfigError("counts and seed must be non-negative")
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not force:
        raise OutputExistsError(f"{root} is not empty; pass --force to write into it")
    total = sum(n_train + n_test_good + n_test_per_defect * len(CATEGORY_DEFECTS[c]) for c in cats)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="synthetic", unit="img")
    summary: dict = {"seed": seed, "size": size, "categories": {}}
    for cat in cats:
        ci = CATEGORIES.index(cat)
        for split, folder, n in (("train", "train", n_train), ("test_good", "test", n_test_good)):
            for i in range(n):
                rng = np.random.default_rng([seed, ci, _SPLITS[split], i])
                _save(root / cat / folder / "good" / f"{i:03d}.png", render_good(cat, size, rng))
                if bar is not None:
                    bar.update()
        for kind in CATEGORY_DEFECTS[cat]:
            ki = DEFECT_KINDS.index(kind)
            for i in range(n_test_per_defect):
                rng = np.random.default_rng([seed, ci, _SPLITS["test_defect"], ki, i])
                img, mask = render_defect(cat, kind, size, rng)
                _save(root / cat / "test" / kind / f"{i:03d}.png", img)
                mask_png = mask.astype(np.uint8) * 255
                _save(root / cat / "ground_truth" / kind / f"{i:03d}_mask.png", mask_png)
                if bar is not None:
                    bar.update()
        summary["categories"][cat] = {
            "train": n_train,
            "test_good": n_test_good,
            "test_defect": {k: n_test_per_defect for k in CATEGORY_DEFECTS[cat]},
        }
    if bar is not None:
        bar.close()
    write_json_atomic(root / "dataset.json", summary)
    return summary
