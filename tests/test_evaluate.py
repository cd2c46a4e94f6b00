from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dcam.core.calibration import Calibrator, gumbel_z_threshold
from dcam.core.scoring import ScoringSpec, judge
from dcam.datasets.layout import Sample
from dcam.training.evaluate import evaluate, markdown_table


def _spec(calibrator: Calibrator, *args) -> ScoringSpec:
    return ScoringSpec((16, 16), "sum", 0.0, *calibrator.fit(*args))


def test_image_and_pixel_auroc_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    n = 12
    samples = [
        Sample(Path(f"{i}.png"), "a" if i % 2 else "b", "good" if i < 6 else "hole")
        for i in range(n)
    ]
    masks = np.zeros((n, 16, 16), bool)
    masks[6:, 4:9, 5:10] = True
    maps = rng.random((n, 16, 16)).astype(np.float32) + masks * rng.random((n, 1, 1)) * 0.5
    spec = _spec(Calibrator(), maps.max(axis=(1, 2))[:6], [s.category for s in samples[:6]])
    report = evaluate(samples, maps, masks, spec)
    for cat in ("a", "b"):
        sel = np.array([s.category == cat for s in samples])
        labels = np.array([s.is_anomalous for s in samples])[sel]
        got = report["per_category"][cat]
        assert got["image_auroc"] == pytest.approx(
            roc_auc_score(labels, maps[sel].max(axis=(1, 2))), abs=1e-12
        )
        assert got["pixel_auroc"] == pytest.approx(
            roc_auc_score(masks[sel].ravel(), maps[sel].ravel()), abs=1e-10
        )
    assert report["mean"]["image_auroc"] == pytest.approx(
        np.mean([report["per_category"][c]["image_auroc"] for c in "ab"])
    )
    assert "| a |" in markdown_table(report)


def test_calibration_thresholds_follow_the_quantile() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 20.0])
    fitted = Calibrator("quantile", 1e-9, 0).fit(scores, ["x", "x", "x", "x", "y", "y"])
    x = fitted.per_category["x"]
    assert x.mean == pytest.approx(2.5) and x.std == pytest.approx(np.std([1, 2, 3, 4]))
    assert x.threshold == pytest.approx(float(x.normalise(4.0)), rel=1e-6)
    assert fitted.calibration.n == 6


def test_gumbel_threshold_holds_its_false_positive_rate() -> None:
    """Maxima of many pixels follow the Gumbel law: fitted by moments on a few hundred good
    images, the threshold's false positive rate on fresh ones is the stated one."""
    assert gumbel_z_threshold(0.01) == pytest.approx(3.137, abs=1e-3)
    rng = np.random.default_rng(0)
    held_out = rng.gumbel(0.4, 0.05, 400)
    cal = Calibrator("gumbel", 0.01).fit(held_out, ["p"] * len(held_out)).per_category["p"]
    fresh = rng.gumbel(0.4, 0.05, 200_000)
    fpr = float(judge(cal, fresh)[1].mean())
    assert 0.005 < fpr < 0.02, fpr  # the empirical 0.99 quantile of 4 images scatters far more


def test_few_held_out_images_cannot_make_a_degenerate_calibration() -> None:
    """Two identical held-out scores have no spread; the pooled spread of the other products
    keeps the std (and so the z-scores) sane."""
    scores = np.array([0.5, 0.5, 0.1, 0.2, 0.3, 0.15, 0.25])
    cats = ["flat", "flat", "a", "a", "a", "a", "a"]
    fitted = Calibrator().fit(scores, cats)
    assert fitted.per_category["flat"].std > 0.01
    assert "expected false positive rate 0.01" in fitted.rule


def test_cut_paste_makes_one_local_anomaly_per_image_from_its_own_product() -> None:
    from dcam.datasets.anomalies import cut_paste

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    products = ["a", "a", "a", "b", "b", "b"]
    fake = cut_paste(images, products, seed=3)
    assert fake.shape == images.shape and fake.dtype == np.uint8
    np.testing.assert_array_equal(fake, cut_paste(images, products, seed=3))  # deterministic
    changed = (fake != images).any(axis=-1)
    for i in range(6):  # a rectangle of 2-10% of the image, not the whole image
        assert 0.005 < changed[i].mean() < 0.15, changed[i].mean()


def test_f1_rule_separates_synthetic_anomalies_and_estimates_detection() -> None:
    from dcam.core.errors import ConfigError
    from dcam.training.calibration import detection_estimate

    rng = np.random.default_rng(1)
    good = rng.normal(1.0, 0.1, 200)
    fake = rng.normal(1.5, 0.1, 200)
    cats = ["p"] * 200
    spec = _spec(Calibrator("f1"), good, cats, fake)
    z = spec.calibration_for("p").threshold
    assert 1.5 < z < 3.5  # between the two groups, in z-units of the good ones
    estimate = detection_estimate(spec, fake, cats)
    assert estimate["detection_rate"] > 0.9 and estimate["per_category"]["p"] > 0.9
    gumbel = _spec(Calibrator(), good, cats)  # 1% FPR: stricter, catches fewer
    assert detection_estimate(gumbel, fake, cats)["detection_rate"] <= estimate["detection_rate"]
    with pytest.raises(ConfigError, match="synthetic"):
        Calibrator("f1").fit(good, cats)


def test_maps_are_smoothed_as_training_smooths_them_by_default() -> None:
    import inspect

    from dcam.training.config import TrainConfig
    from dcam.training.evaluate import predict_maps

    defaults = inspect.signature(predict_maps).parameters
    assert defaults["sigma"].default == TrainConfig.sigma == 4.0
    assert defaults["combine"].default == TrainConfig.combine
