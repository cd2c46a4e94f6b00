"""Tests for dcam.core.metrics against scikit-learn and hand-computed PRO values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from dcam.core.metrics import auroc, f1_max, pro_curve, pro_score


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------- AUROC


def test_auroc_matches_sklearn_with_ties(rng: np.random.Generator) -> None:
    labels = rng.random(500) < 0.3
    scores = rng.integers(0, 10, size=500).astype(np.float64) + labels  # many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_matches_sklearn_pixel_sized(rng: np.random.Generator) -> None:
    labels = (rng.random((2, 100, 1000)) < 0.05).astype(np.uint8)
    scores = (rng.normal(size=labels.shape) + labels).astype(np.float32)
    scores = np.round(scores, 2)  # force ties, as quantized maps have
    expected = roc_auc_score(labels.ravel(), scores.ravel())
    assert auroc(labels, scores) == pytest.approx(expected, abs=1e-10)


def test_auroc_perfect_and_inverted() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auroc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auroc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auroc(labels, np.ones(4)) == 0.5


@pytest.mark.parametrize("labels", [np.zeros(5, dtype=bool), np.ones(5, dtype=bool)])
def test_auroc_raises_on_one_class(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="both"):
        auroc(labels, np.arange(5.0))


def test_auroc_raises_on_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        auroc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


# ---------------------------------------------------------------- F1


@pytest.mark.parametrize("levels", [5, 1000])
def test_f1_max_matches_sklearn(rng: np.random.Generator, levels: int) -> None:
    labels = rng.random(2000) < 0.2
    scores = rng.integers(0, levels, size=2000) / levels + 0.3 * labels
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best = int(np.argmax(f1[:-1]))
    value, threshold = f1_max(labels, scores)
    assert value == pytest.approx(f1[best], abs=1e-12)
    assert threshold == pytest.approx(thresholds[best])
    predicted = scores >= threshold
    tp = np.count_nonzero(predicted & labels)
    assert 2 * tp / (predicted.sum() + labels.sum()) == pytest.approx(value)


def test_f1_max_perfect_separation() -> None:
    value, threshold = f1_max(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.9]))
    assert value == 1.0
    assert threshold == 0.7


def test_f1_max_raises_without_positives() -> None:
    with pytest.raises(ValueError, match="positive"):
        f1_max(np.zeros(4), np.arange(4.0))


# ---------------------------------------------------------------- PRO


def _reference_pro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Slow threshold-by-threshold PRO, written independently of the cumulative-sum version."""
    regions = []
    for mask, amap in zip(masks, maps, strict=True):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labeled == k] for k in range(1, count + 1)]
    normal = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        points.append(
            (float(np.mean(normal >= t)), float(np.mean([np.mean(r >= t) for r in regions])))
        )
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    keep = x <= fpr_limit
    xs, ys = list(x[keep]), list(y[keep])
    if xs[-1] < fpr_limit:
        j = int(np.argmax(x > fpr_limit))
        xs.append(fpr_limit)
        ys.append(y[j - 1] + (fpr_limit - x[j - 1]) * (y[j] - y[j - 1]) / (x[j] - x[j - 1]))
    xs_a, ys_a = np.array(xs), np.array(ys)
    return float(np.sum(np.diff(xs_a) * (ys_a[1:] + ys_a[:-1]) / 2)) / fpr_limit


def test_pro_perfect_map_is_one(rng: np.random.Generator) -> None:
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 2:5, 2:5] = True
    masks[0, 10:12, 8:15] = True
    masks[1, 7, 7] = True  # image 2 is a good image
    assert pro_score(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-12)
    assert pro_score(masks, masks + 0.1 * rng.random(masks.shape)) == pytest.approx(1.0)


def test_pro_one_region_found_other_missed() -> None:
    # Region A (4 px) scores above every normal pixel; region B (1 px) below every normal pixel.
    # Curve: (0,0) -> (0, 0.5) after A -> fpr rises to 1 at pro 0.5 -> (1, 1) after B.
    # Area up to 0.3 is 0.5 * 0.3, normalized: 0.5.
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 0:2, 0:2] = True  # A
    masks[1, 5, 5] = True  # B, in another image
    maps = np.linspace(0.1, 0.9, masks.size).reshape(masks.shape)  # distinct normal scores
    maps[0, 0:2, 0:2] = 2.0
    maps[1, 5, 5] = -1.0
    assert pro_score(masks, maps) == pytest.approx(0.5, abs=1e-9)
    # Up to fpr 1 the last step (1, 0.5) -> (1, 1) is vertical and adds no area.
    assert pro_score(masks, maps, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-9)


def test_pro_interpolates_at_fpr_limit() -> None:
    # One 1x13 image: A = pixels 0,1 (score 1.0); normals 2..12 except 4 (10 normals);
    # B = pixel 4. Normal 2 scores 0.9; normals 3, 5, 6 tie with B at 0.8; the rest lower.
    # Curve: (0,0), (0,0.5), (0.1,0.5), (0.4,1.0), ...   At fpr 0.3 the interpolated pro is
    # 0.5 + (0.2/0.3)*0.5 = 5/6. Area = 0.1*0.5 + 0.2*(0.5+5/6)/2 = 11/60; /0.3 = 11/18.
    masks = np.zeros((1, 1, 13), dtype=bool)
    masks[0, 0, [0, 1, 4]] = True
    maps = np.zeros((1, 1, 13))
    maps[0, 0, [0, 1]] = 1.0
    maps[0, 0, 2] = 0.9
    maps[0, 0, [3, 4, 5, 6]] = 0.8
    maps[0, 0, 7:] = [0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    assert pro_score(masks, maps) == pytest.approx(11 / 18, abs=1e-9)
    # Cutting at 0.25 instead: pro 0.5 + 0.15*(0.5/0.3) = 0.75 there;
    # area 0.05 + 0.15*(0.5+0.75)/2 = 0.14375, /0.25 = 0.575.
    assert pro_score(masks, maps, fpr_limit=0.25) == pytest.approx(0.575, abs=1e-9)


def test_pro_constant_map_is_diagonal() -> None:
    # All pixels tie: the curve is (0,0) -> (1,1); the area of pro = fpr up to 0.3 is 0.045.
    masks = np.zeros((4, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[2, 5:8, 0:2] = True
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    fprs, pros = pro_curve(masks, maps)
    np.testing.assert_allclose(fprs, [0.0, 1.0])
    np.testing.assert_allclose(pros, [0.0, 1.0])
    assert pro_score(masks, maps) == pytest.approx(0.15, abs=1e-9)


def test_pro_regions_are_8_connected() -> None:
    # A diagonal pair is one region: detecting one of its two pixels gives pro 0.5, not 1.0
    # as it would if the pixels were two regions and the missed one were weighted separately.
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    maps[0, 1, 1] = -1.0
    fprs, pros = pro_curve(masks, maps)
    assert pros[1] == pytest.approx(0.5)
    assert fprs[1] == 0.0


def test_pro_matches_reference_on_random_maps(rng: np.random.Generator) -> None:
    masks = np.zeros((5, 12, 12), dtype=bool)
    masks[0, 1:4, 1:6] = True
    masks[0, 8, 8] = True
    masks[1, 5:11, 2:4] = True
    masks[3, 0:2, 9:12] = True
    masks[3, 10, 0] = masks[3, 11, 1] = True
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 1)  # coarse values, many ties
    for limit in (0.05, 0.3, 1.0):
        assert pro_score(masks, maps, limit) == pytest.approx(
            _reference_pro(masks, maps, limit), abs=1e-9
        )


def test_pro_raises_without_regions_or_normals() -> None:
    with pytest.raises(ValueError, match="region"):
        pro_score(np.zeros((2, 4, 4), dtype=bool), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="normal"):
        pro_score(np.ones((1, 4, 4), dtype=bool), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_score(np.ones((1, 4, 4), dtype=bool), np.zeros((1, 4, 4)), fpr_limit=0.0)
