"""dcam.review.fit: thresholds from labels, exact on hand-built parts, and bounds and AUC checked
against scipy and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from dcam.core.errors import ConfigError, InputError
from dcam.review.fit import (
    Confusion,
    Part,
    binomial_lower,
    binomial_upper,
    confusion,
    defect_scores,
    good_scores,
    min_goods_for,
    roc,
    threshold_for_detection_rate,
    threshold_for_false_call_rate,
)


def _goods(*scores: float) -> list[Part]:
    return [Part(float(s), "good", False) for s in scores]


def _defects(*scores: float) -> list[Part]:
    return [Part(float(s), "defect", True) for s in scores]


# Two presumed goods (unlabelled, passed), a skipped pass (also presumed), and two parts the
# line flagged that nobody judged: never presumed anything.
MIXED = [
    *_goods(0.0, 1.0, 2.0),
    *_defects(1.5, 3.0, 4.0),
    Part(0.5, None, False),
    Part(2.5, None, False),
    Part(0.7, "skip", False),
    Part(3.5, None, True),
    Part(1.2, None, True),
]


def test_scores_presume_only_passed_unlabelled_parts() -> None:
    assert sorted(good_scores(MIXED, presume_passed_good=False)) == [0.0, 1.0, 2.0]
    assert sorted(good_scores(MIXED, presume_passed_good=True)) == [0.0, 0.5, 0.7, 1.0, 2.0, 2.5]
    assert sorted(defect_scores(MIXED)) == [1.5, 3.0, 4.0]


def test_confusion_counts_presumed_goods_and_leaves_flagged_unlabelled_out() -> None:
    # > 1.8: defects 3.0, 4.0 caught, 1.5 missed; goods 2.0 and presumed 2.5 called.
    expected = Confusion(tp=2, fp=2, tn=4, fn=1, presumed_good=3, unlabelled_flagged=1)
    assert confusion(MIXED, 1.8) == expected
    assert confusion(MIXED, 1.8, presume_passed_good=False) == Confusion(2, 1, 2, 1, 0, 2)
    # Strict `>`: a part at the threshold is not flagged.
    assert confusion(MIXED, 2.0, presume_passed_good=False).fp == 0


def test_false_call_threshold_is_the_k_plus_first_good() -> None:
    parts = _goods(*np.arange(10) * 0.5) + _defects(4.2, 5.0)
    fit = threshold_for_false_call_rate(parts, 0.1)
    assert (fit.threshold, fit.false_calls, fit.detections) == (4.0, 1, 2)
    assert (fit.goods, fit.defects, fit.presumed_good) == (10, 2, 0)
    assert fit.false_call_rate == 0.1 and fit.detection_rate == 1.0
    assert threshold_for_false_call_rate(parts, 0.25).threshold == 3.5
    zero = threshold_for_false_call_rate(parts, 0.05)  # floor(0.5) = 0 calls allowed
    assert (zero.threshold, zero.false_calls, zero.detections) == (4.5, 0, 1)


def test_false_call_threshold_with_ties_never_exceeds_the_allowance() -> None:
    parts = _goods(1, 2, 3, 3, 3)
    for rate, expected in [(0.2, 3.0), (0.5, 3.0), (0.7, 2.0), (0.9, 1.0)]:
        fit = threshold_for_false_call_rate(parts, rate)
        assert fit.threshold == expected
        assert fit.false_calls <= math.floor(rate * 5)


def test_false_call_threshold_is_the_lowest_that_meets_the_rate() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 50, 333):
        scores = np.round(rng.normal(size=n), 1)  # many ties
        for rate in (0.01, 0.1, 0.29, 0.5):
            t = threshold_for_false_call_rate(_goods(*scores), rate).threshold
            allowed = math.floor(rate * n + 1e-9)
            assert (scores > t).sum() <= allowed < (scores > np.nextafter(t, -np.inf)).sum()


def test_floor_is_safe_from_binary_rounding() -> None:
    fit = threshold_for_false_call_rate(_goods(*range(100)), 0.29)  # 0.29 * 100 = 28.999...
    assert (fit.threshold, fit.false_calls) == (70.0, 29)


def test_presumed_goods_switch() -> None:
    on = threshold_for_false_call_rate(MIXED, 0.2)  # goods 2.5 2.0 1.0 0.7 0.5 0.0, k = 1
    assert (on.threshold, on.goods, on.presumed_good, on.false_calls) == (2.0, 6, 3, 1)
    off = threshold_for_false_call_rate(MIXED, 0.2, presume_passed_good=False)  # k = 0
    assert (off.threshold, off.goods, off.presumed_good, off.false_calls) == (2.0, 3, 0, 0)


def test_enough_goods_and_the_note() -> None:
    few = threshold_for_false_call_rate(_goods(*range(58)), 0.05)
    assert not few.enough and "too few goods" in few.note and "59" in few.note
    enough = threshold_for_false_call_rate(_goods(*range(59)), 0.05)
    assert enough.enough and "too few" not in enough.note
    assert enough.false_calls == 2  # floor(0.05 * 59)
    assert enough.bound == pytest.approx(binomial_upper(2, 59))


def test_no_goods_fits_nothing() -> None:
    fit = threshold_for_false_call_rate(_defects(1.0), 0.05)
    assert fit.threshold is None and not fit.enough and fit.bound is None
    assert fit.false_call_rate is None and "No goods" in fit.note


def test_detection_threshold_sits_midway_below_the_jth_defect() -> None:
    parts = _defects(5, 4, 3, 2) + _goods(1, 3.5)
    fit = threshold_for_detection_rate(parts, 0.75)  # j = 3: below 3.0, next lower is 2.0
    assert (fit.threshold, fit.detections, fit.false_calls) == (2.5, 3, 1)
    assert fit.detection_rate == 0.75 and fit.false_call_rate == 0.5
    assert fit.bound == pytest.approx(binomial_lower(3, 4))
    assert threshold_for_detection_rate(parts, 0.99).threshold == 1.5  # j = 4, good at 1.0
    alone = threshold_for_detection_rate(_defects(2, 3) + _goods(5), 0.9)
    assert (alone.threshold, alone.detections) == (1.0, 2)  # nothing below: d_j - 1


def test_detection_threshold_counts_presumed_goods_as_scores_below() -> None:
    parts = [*_defects(2.0), Part(1.0, None, False)]
    assert threshold_for_detection_rate(parts, 0.5).threshold == 1.5
    assert threshold_for_detection_rate(parts, 0.5, presume_passed_good=False).threshold == 1.0


def test_detection_enough_and_empty() -> None:
    assert not threshold_for_detection_rate(_defects(*range(58)), 0.95).enough
    assert threshold_for_detection_rate(_defects(*range(59)), 0.95).enough
    empty = threshold_for_detection_rate(_goods(1.0, 2.0), 0.9)
    assert empty.threshold is None and not empty.enough and empty.goods == 2
    assert "No defects" in empty.note


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 59), (1, 10), (5, 20), (19, 20), (7, 300)])
def test_bounds_match_the_exact_two_sided_interval(k: int, n: int) -> None:
    # A one-sided 95% Clopper-Pearson bound is one end of the two-sided 90% exact interval.
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")
    assert binomial_upper(k, n) == pytest.approx(ci.high, abs=1e-9)
    assert binomial_lower(k, n) == pytest.approx(ci.low, abs=1e-9)


def test_bound_edge_cases() -> None:
    assert binomial_upper(0, 59) == pytest.approx(0.04950, abs=1e-5)
    assert binomial_upper(0, 59) == pytest.approx(stats.beta.ppf(0.95, 1, 59))
    assert binomial_lower(59, 59) == pytest.approx(0.05 ** (1 / 59))
    assert (binomial_upper(0, 0), binomial_lower(0, 0)) == (1.0, 0.0)
    assert (binomial_upper(4, 4), binomial_lower(0, 4)) == (1.0, 0.0)
    assert binomial_upper(1, 10, 0.99) > binomial_upper(1, 10, 0.9)
    with pytest.raises(InputError):
        binomial_upper(3, 2)
    with pytest.raises(ConfigError):
        binomial_lower(1, 2, confidence=1.0)


def test_min_goods_for() -> None:
    assert min_goods_for(0.05) == 59
    assert min_goods_for(0.01) == 299
    assert min_goods_for(0.5, 0.75) == 2
    for rate in (0.001, 0.02, 0.1, 0.3):
        n = min_goods_for(rate, 0.9)
        assert binomial_upper(0, n, 0.9) <= rate + 1e-12 < binomial_upper(0, n - 1, 0.9)


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    goods = np.round(rng.normal(0.0, 1.0, 300), 1)
    defects = np.round(rng.normal(1.0, 1.0, 40), 1)
    curve = roc(_goods(*goods) + _defects(*defects))
    assert curve is not None and (curve.goods, curve.defects) == (300, 40)
    y = np.r_[np.zeros(300), np.ones(40)]
    assert curve.auc == pytest.approx(roc_auc_score(y, np.r_[goods, defects]), abs=1e-12)
    assert (curve.fpr[0], curve.tpr[0], curve.fpr[-1], curve.tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(curve.fpr) >= 0) and np.all(np.diff(curve.tpr) >= 0)
    assert np.all(np.diff(curve.thresholds) < 0)
    # Each point is the decision `score > threshold`.
    i = len(curve.thresholds) // 2
    assert curve.fpr[i] == np.mean(goods > curve.thresholds[i])


def test_roc_needs_both_kinds_and_honours_presumed_goods() -> None:
    assert roc(_goods(1.0, 2.0)) is None
    assert roc([*_defects(1.0), Part(0.0, None, False)], presume_passed_good=False) is None
    curve = roc(MIXED)
    assert curve is not None and (curve.goods, curve.defects) == (6, 3)
    assert roc(_goods(0.0) + _defects(1.0)).auc == 1.0
    assert roc(_goods(1.0) + _defects(1.0)).auc == 0.5


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_rates_raise(rate: float) -> None:
    with pytest.raises(ConfigError):
        threshold_for_false_call_rate(_goods(1.0), rate)
    with pytest.raises(ConfigError):
        threshold_for_detection_rate(_defects(1.0), rate)


@pytest.mark.parametrize("confidence", [0.5, 1.0, 0.3])
def test_bad_confidence_raises(confidence: float) -> None:
    with pytest.raises(ConfigError):
        threshold_for_false_call_rate(_goods(1.0), 0.1, confidence=confidence)
    with pytest.raises(ConfigError):
        min_goods_for(0.1, confidence)


def test_bad_parts_raise() -> None:
    with pytest.raises(InputError, match="unknown label"):
        Part(1.0, "maybe", False)
    with pytest.raises(InputError, match="finite"):
        Part(float("nan"), "good", False)


def test_flagged_parts_nobody_labelled_leave_a_false_call_fit_unbacked() -> None:
    """Passed parts may be presumed good; flagged ones above the threshold may each be a false
    call, so a fit with any of them left is not backed, however many goods there are."""
    goods = [Part(float(i) / 100, None, False) for i in range(200)]  # presumed good
    unknown = [Part(5.0, None, True), Part(6.0, None, True)]
    fitted = threshold_for_false_call_rate(goods + unknown, 0.05)
    assert fitted.goods == 200 and not fitted.enough
    assert "2 flagged parts above it are unlabelled" in fitted.note
    labelled = [Part(5.0, "defect", True), Part(6.0, "good", True)]
    assert threshold_for_false_call_rate(goods + labelled, 0.05).enough
