"""Find and load multi-class training data: MVTec AD layout or plain folders of good images.

MVTec layout: `<category>/train/good`, `<category>/test/<defect>` and
`<category>/ground_truth/<defect>/<name>_mask.png`. Folder layout: `<category>/*.png`, all good,
training only. Any number of roots and categories are pooled into one multi-class set; a
deterministic share of each category's good training images is held out for model selection and
threshold calibration.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dcam.core.errors import DcamError
from dcam.core.images import list_images, load_image, load_mask


@dataclass(frozen=True)
class Sample:
    path: Path
    category: str
    label: str  # "good" or the defect kind
    mask_path: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.label != "good"


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]

    def summary(self) -> dict:
        cats = sorted({s.category for s in self.train})
        return {
            c: {
                "train": sum(s.category == c for s in self.train),
                "val": sum(s.category == c for s in self.val),
                "test_good": sum(s.category == c and not s.is_anomalous for s in self.test),
                "test_anomalous": sum(s.category == c and s.is_anomalous for s in self.test),
            }
            for c in cats
        }


def is_mvtec_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def find_categories(root: Path) -> list[str]:
    if not root.is_dir():
        raise DcamError(f"data folder {root} does not exist")
    cats = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cats:
        raise DcamError(f"data folder {root} holds no category folders")
    return cats


def _test_samples(folder: Path, category: str) -> list[Sample]:
    samples = []
    test_root = folder / "test"
    if not test_root.is_dir():
        return samples
    for defect_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
        for path in list_images(defect_dir):
            mask = None
            if defect_dir.name != "good":
                mask = folder / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png"
                if not mask.is_file():
                    raise DcamError(f"{path}: its ground-truth mask {mask} is missing")
            samples.append(Sample(path, category, defect_dir.name, mask))
    return samples


def discover(
    roots: Sequence[Path],
    categories: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    min_val: int = 1,
) -> Splits:
    """Pool the requested categories of all roots into train / held-out good / test splits."""
    splits = Splits([], [], [])
    seen: set[str] = set()
    for root in map(Path, roots):
        available = find_categories(root)
        wanted = [c for c in available if categories is None or c in categories]
        for category in wanted:
            folder = root / category
            good_dir = folder / "train" / "good" if is_mvtec_category(folder) else folder
            good = [Sample(p, category, "good") for p in list_images(good_dir)]
            if len(good) < 2:
                raise DcamError(f"{good_dir}: need at least 2 good images, found {len(good)}")
            random.Random(f"{seed}:{category}").shuffle(good)
            # At least min_val held out (calibration needs them), at most half the images.
            n_val = max(1, min(max(round(len(good) * val_fraction), min_val), len(good) // 2))
            splits.val += good[:n_val]
            splits.train += good[n_val:]
            splits.test += _test_samples(folder, category)
            seen.add(category)
    missing = sorted(set(categories or ()) - seen)
    if missing:
        raise DcamError(f"categories {missing} not found under {[str(r) for r in roots]}")
    if not splits.train:
        raise DcamError(f"no training images under {[str(r) for r in roots]}")
    return splits


def load_images(samples: Sequence[Sample], size: int, desc: str = "loading") -> np.ndarray:
    """Decode and resize all samples into one (N, size, size, 3) uint8 array."""
    out = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for i, sample in enumerate(tqdm(samples, desc=desc, leave=False, disable=len(samples) < 50)):
        out[i] = load_image(sample.path, size)
    return out


def load_masks(samples: Sequence[Sample], size: int) -> np.ndarray:
    """Ground-truth masks as (N, size, size) bool; good images get an empty mask."""
    out = np.zeros((len(samples), size, size), dtype=bool)
    for i, sample in enumerate(samples):
        if sample.mask_path is not None:
            out[i] = load_mask(sample.mask_path, size)
    return out
