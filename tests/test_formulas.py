"""Pretraining data families: dead leaves, spectral noise, the mix, and the `--data` flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dcam.core.errors import ConfigError
from dcam.teacher import fractal
from dcam.teacher.cli import teacher_group
from dcam.teacher.config import FAMILIES, PretrainConfig, data_families
from dcam.teacher.formulas import make_classes, render_batch, render_set


@pytest.mark.parametrize("family", ["dead_leaves", "spectral"])
def test_procedural_family_renders_fresh_textured_instances(family: str) -> None:
    classes = make_classes(family, 6, seed=0)
    ids = np.array([0, 0, 1, 2, 3, 4, 5])
    a = render_batch(classes, ids, np.random.default_rng(3), 48)
    assert a.dtype == np.uint8 and a.shape == (7, 48, 48, 3)
    np.testing.assert_array_equal(a, render_batch(classes, ids, np.random.default_rng(3), 48))
    assert (a.reshape(7, -1, 3).std(1).max(1) > 3).all()  # texture, not a flat colour
    assert (a[0] != a[1]).any(-1).mean() > 0.3  # two draws of one class are different images
    # ... and the classes themselves differ: fresh parameters per class, not one generator.
    assert len({json.dumps(c[1], default=str) for c in classes}) == 6


def test_mix_splits_classes_evenly_over_the_families() -> None:
    classes = make_classes("mix", 7, seed=0)
    kinds = [kind for kind, _ in classes]
    assert [kinds.count(f) for f in FAMILIES] == [3, 2, 2]
    images = render_batch(classes, np.arange(7), np.random.default_rng(0), 32)
    assert images.shape == (7, 32, 32, 3) and (images.reshape(7, -1).std(1) > 1).all()
    images, labels = render_set(classes, 2, 32, seed=1)
    assert images.shape == (14, 32, 32, 3) and np.bincount(labels).tolist() == [2] * 7


def test_pure_fractal_data_renders_exactly_as_the_shipped_teacher_saw_it() -> None:
    """The shipped teacher was trained before the families existed: it stays reproducible."""
    systems = fractal.make_classes(5, 0)
    classes = make_classes("fractal", 5, seed=0)
    assert all(np.array_equal(s, c) for s, (_, c) in zip(systems, classes, strict=True))
    ids = np.array([4, 0, 2, 2, 1])
    old = fractal.render_batch(systems, ids, np.random.default_rng(9), 32)
    np.testing.assert_array_equal(old, render_batch(classes, ids, np.random.default_rng(9), 32))


def test_families_join_with_plus_and_unknown_data_is_refused() -> None:
    classes = make_classes("dead_leaves+spectral", 5, seed=0)
    assert [kind for kind, _ in classes] == ["dead_leaves"] * 3 + ["spectral"] * 2
    assert data_families("mix") == FAMILIES
    for bad in ("photos", "dead_leaves+photos", "spectral+spectral", ""):
        with pytest.raises(ConfigError, match="unknown data"):
            PretrainConfig(out="x", data=bad)
    with pytest.raises(ConfigError, match="unknown data"):
        make_classes("photos", 4, 0)


def test_cli_pretrains_on_each_family_and_records_it(tmp_path: Path) -> None:
    for data in (*FAMILIES, "mix", "fractal+dead_leaves"):
        out = tmp_path / data
        args = ["pretrain", "--data", data, "--out", str(out), "--classes", "3"]
        args += ["--image-size", "32", "--batch-size", "4", "--max-images", "8", "--minutes", "0"]
        result = CliRunner().invoke(teacher_group, [*args, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        info = json.loads((out / "teacher.json").read_text())
        assert info["data"] == data and info["images_seen"] == 8
