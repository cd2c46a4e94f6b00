"""Tests for the synthetic MVTec-layout dataset generator (small sizes, so they run fast)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcam.datasets import synthetic as syn
from dcam.datasets import synthetic_shapes as shapes

SIZE = 64
COUNTS = {"n_train": 2, "n_test_good": 1, "n_test_per_defect": 1}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("syn") / "a"
    return root, syn.generate_dataset(root, size=SIZE, seed=0, **COUNTS)


def test_names_cover_requirements() -> None:
    assert len(syn.CATEGORIES) >= 6
    assert len(syn.DEFECT_KINDS) >= 5
    textures = [c for c in syn.CATEGORIES if c in shapes.TEXTURES]
    assert len(textures) >= 3
    assert len(syn.CATEGORIES) - len(textures) >= 3
    assert set(syn.CATEGORY_DEFECTS) == set(syn.CATEGORIES)
    assert all(len(kinds) >= 4 for kinds in syn.CATEGORY_DEFECTS.values())
    used = set(itertools.chain.from_iterable(syn.CATEGORY_DEFECTS.values()))
    assert used == set(syn.DEFECT_KINDS)


def test_determinism(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset
    syn.generate_dataset(tmp_path / "b", size=SIZE, seed=0, **COUNTS)
    syn.generate_dataset(tmp_path / "c", size=SIZE, seed=1, **COUNTS)
    first, again, other = _files(root), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert first == again
    assert first.keys() == other.keys()
    images = [k for k in first if "ground_truth" not in k]
    assert all(first[k] != other[k] for k in images)


def test_category_independent_of_selection(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset
    syn.generate_dataset(tmp_path, categories=["nut"], size=SIZE, seed=0, **COUNTS)
    assert _files(tmp_path / "nut") == _files(root / "nut")


def test_layout_matches_summary(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    assert summary["seed"] == 0
    assert summary["size"] == SIZE
    assert list(summary["categories"]) == list(syn.CATEGORIES)
    for cat, info in summary["categories"].items():
        assert len(list((root / cat / "train" / "good").glob("*.png"))) == info["train"] == 2
        assert len(list((root / cat / "test" / "good").glob("*.png"))) == info["test_good"] == 1
        assert set(info["test_defect"]) == set(syn.CATEGORY_DEFECTS[cat])
        for kind, n in info["test_defect"].items():
            images = sorted((root / cat / "test" / kind).glob("*.png"))
            masks = sorted((root / cat / "ground_truth" / kind).glob("*_mask.png"))
            assert len(images) == len(masks) == n == 1
            assert [p.stem + "_mask" for p in images] == [p.stem for p in masks]


def test_written_images_and_masks(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for path in root.rglob("*.png"):
        with Image.open(path) as im:
            assert im.size == (SIZE, SIZE)
            if "ground_truth" in path.parts:
                assert im.mode == "L"
                mask = np.asarray(im)
                assert set(np.unique(mask)) == {0, 255}
            else:
                assert im.mode == "RGB"


@pytest.mark.parametrize("category", syn.CATEGORIES)
def test_render_defect_masks_changed_region(category: str) -> None:
    inside, outside = [], []
    for i, kind in enumerate(syn.CATEGORY_DEFECTS[category]):
        scene = shapes.RENDERERS[category](SIZE, np.random.default_rng([7, i]))
        img, mask = syn.render_defect(category, kind, SIZE, np.random.default_rng([7, i]))
        assert img.dtype == np.uint8
        assert img.shape == (SIZE, SIZE, 3)
        assert mask.dtype == bool
        assert mask.shape == (SIZE, SIZE)
        assert 0 < mask.mean() < 0.1
        diff = np.abs(img / 255.0 - scene.img).max(axis=-1)
        inside.append(diff[mask].mean())
        outside.append(diff[~mask].mean())
    # The defect, not the sensor noise, is what differs inside the mask.
    assert np.mean(inside) > 2 * np.mean(outside)


def test_good_images_vary_and_categories_differ() -> None:
    stats = {}
    for cat in syn.CATEGORIES:
        a = syn.render_good(cat, SIZE, np.random.default_rng(1))
        b = syn.render_good(cat, SIZE, np.random.default_rng(2))
        assert a.dtype == np.uint8
        assert a.shape == (SIZE, SIZE, 3)
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0  # normal variation is real
        stats[cat] = np.concatenate([a.mean(axis=(0, 1)), a.std(axis=(0, 1))]) / 255.0
    for c1, c2 in itertools.combinations(syn.CATEGORIES, 2):
        assert np.abs(stats[c1] - stats[c2]).max() > 0.03, (c1, c2)


def test_unknown_names_raise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="carpet"):
        syn.render_good("sofa", SIZE, rng)
    with pytest.raises(ValueError, match="scratch"):
        syn.render_defect("nut", "dent", SIZE, rng)
    with pytest.raises(ValueError, match="missing"):
        syn.render_defect("carpet", "missing", SIZE, rng)  # valid kind, not for textures
    with pytest.raises(ValueError, match="capsule"):
        syn.generate_dataset(tmp_path, categories=["nut", "sofa"], size=SIZE)
    assert not any(tmp_path.iterdir())  # validated before anything is written
