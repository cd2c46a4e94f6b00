from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcam.core.errors import DcamError
from dcam.datasets.layout import discover, load_images, load_masks


def test_mvtec_layout_pools_categories(synthetic_root: Path) -> None:
    splits = discover([synthetic_root], val_fraction=0.25, seed=0)
    summary = splits.summary()
    assert sorted(summary) == ["carpet", "nut"]
    for counts in summary.values():
        assert counts["train"] == 9 and counts["val"] == 3
        assert counts["test_good"] == 3 and counts["test_anomalous"] > 0
    anomalous = [s for s in splits.test if s.is_anomalous]
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in anomalous)
    masks = load_masks(splits.test, 64)
    labels = np.array([s.is_anomalous for s in splits.test])
    assert masks[labels].reshape(labels.sum(), -1).any(axis=1).all()
    assert not masks[~labels].any()
    # deterministic split
    again = discover([synthetic_root], val_fraction=0.25, seed=0)
    assert [s.path for s in again.val] == [s.path for s in splits.val]


def test_folder_layout_and_several_roots(tmp_path: Path, synthetic_root: Path) -> None:
    plain = tmp_path / "plain" / "washers"
    plain.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((40, 40, 3), i * 40, np.uint8)).save(plain / f"{i}.jpg")
    splits = discover([synthetic_root, tmp_path / "plain"], categories=["nut", "washers"])
    assert {s.category for s in splits.train} == {"nut", "washers"}
    assert not [s for s in splits.test if s.category == "washers"]
    assert load_images(splits.train, 32).shape == (len(splits.train), 32, 32, 3)


def test_unknown_category_lists_it(synthetic_root: Path) -> None:
    with pytest.raises(DcamError, match="bolts"):
        discover([synthetic_root], categories=["bolts"])


def test_missing_mask_is_named(tmp_path: Path, synthetic_root: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root / "nut", root / "nut")
    mask = next((root / "nut" / "ground_truth").rglob("*_mask.png"))
    mask.unlink()
    with pytest.raises(DcamError, match="mask"):
        discover([root])


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DcamError, match="does not exist"):
        discover([tmp_path / "nothing"])
