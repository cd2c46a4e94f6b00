"""The calibrator (core/calibration.py) owns the decision: its numbers are those of the code it
replaced, and it explains the decision (heatmap scale, drift law) from the same record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dcam.core import drift
from dcam.core.calibration import Calibration, Calibrator, gumbel_z_cdf, gumbel_z_threshold
from dcam.core.errors import ConfigError
from dcam.core.scoring import ScoringSpec

CATEGORIES = ["bottle"] * 12 + ["nut"] * 5 + ["screw"] * 3

# Recorded from the implementation this module replaced (training/calibration.py `calibrate`
# and `detection_estimate`, client/heatmap.py `product_scale`, core/drift.py `reference_edges`
# and `gumbel_z_cdf` at commit 40682bc) on the inputs of `_inputs()`: demo and benchmark figures
# must not move. Per method and product ("global" for the global calibration): mean, std,
# threshold and n, then the heatmap scale (low, high, at threshold).
RECORDED = json.loads((Path(__file__).parent / "data" / "calibration-40682bc.json").read_text())
OLD = {
    method: {
        None if name == "global" else name: (
            tuple(values["mean_std_threshold_n"]),
            tuple(values["heatmap_low_high_threshold"]),
        )
        for name, values in products.items()
    }
    for method, products in RECORDED["calibration"].items()
}
OLD_DETECTION = {  # detection_estimate: over all, then bottle, nut, screw
    "gumbel": (0.45, 0.5833333333333334, 0.2, 0.3333333333333333),
    "quantile": (0.55, 0.6666666666666666, 0.2, 0.6666666666666666),
    "f1": (0.75, 0.75, 0.8, 0.6666666666666666),
}
OLD_RULES = {
    "gumbel": "Gumbel fit, threshold z > 1.866; expected false positive rate 0.05",
    "quantile": "empirical 0.95 quantile of held-out z-scores; expected false positive rate 0.05",
    "f1": "threshold maximising F1 of synthetic anomalies (CutPaste) against held-out good "
    "images; no stated false positive rate",
}
OLD_GUMBEL_THRESHOLDS = {
    0.01: 3.136668429769572,
    0.05: 1.8657985271719422,
    0.001: 4.935511476246735,
}
OLD_EDGES = {  # drift's reference edges: (threshold, bins) -> inner edges
    (3.137, 10): [-1.103740015730556, -0.8259509335908444, -0.6012646686898836,
                  -0.39039283450761864, -0.17550360893306666, 0.0585052400086174,
                  0.33210269474209725, 0.6851099866117845, 1.2335413554296708],
    (1.5, 4): [-0.7495356720942872, -0.25146223318619554, 0.3258331199489269],
    (0.2, 5): [-1.0074139669835172, -0.68445864948995, -0.4061545101240079,
               -0.12320268858689543],
}  # fmt: skip
OLD_CDF = {-1.0: 0.1320568064354094, 0.0: 0.5703760016750231, 2.5: 0.9775157258823671}


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    scores = np.concatenate(
        [rng.gumbel(0.4, 0.05, 12), rng.gumbel(0.9, 0.2, 5), rng.gumbel(0.2, 0.01, 3)]
    )
    return scores, scores + rng.uniform(-0.05, 0.6, len(scores))


@pytest.mark.parametrize("method", list(OLD))
def test_calibrator_gives_the_numbers_of_the_code_it_replaced(method: str) -> None:
    from dcam.client.heatmap import product_scale
    from dcam.training.calibration import detection_estimate

    scores, synthetic = _inputs()
    fitted = Calibrator(method, 0.05, 2.0).fit(scores, CATEGORIES, synthetic)
    spec = ScoringSpec((8, 8), "sum", 0.0, *fitted)
    assert fitted.rule.endswith(OLD_RULES[method]) and "2 pseudo-images" in fitted.rule
    for category, (stats, scale) in OLD[method].items():
        c = spec.calibration_for(category)
        np.testing.assert_allclose([c.mean, c.std, c.threshold], stats[:3], rtol=0, atol=0)
        assert c.n == stats[3]
        got = product_scale(spec, category)
        np.testing.assert_allclose([got.vmin, got.vmax, got.threshold], scale, rtol=0, atol=0)
    estimate = detection_estimate(spec, synthetic, CATEGORIES)
    got = [estimate["detection_rate"], *estimate["per_category"].values()]
    np.testing.assert_allclose(got, OLD_DETECTION[method], rtol=0, atol=0)


def test_drift_law_is_the_old_one() -> None:
    for fpr, value in OLD_GUMBEL_THRESHOLDS.items():
        assert gumbel_z_threshold(fpr) == value
    for z, value in OLD_CDF.items():
        assert gumbel_z_cdf(z) == value
    for (threshold, bins), edges in OLD_EDGES.items():
        calibration = Calibration(0.0, 1.0, threshold)
        np.testing.assert_allclose(calibration.law_edges(bins), edges, rtol=0, atol=0)
        window = drift.DriftWindow(drift.DriftSpec(window=4 * bins, bins=bins), calibration)
        np.testing.assert_array_equal(window.edges, edges)


def test_the_record_round_trips_with_its_rule() -> None:
    scores, synthetic = _inputs()
    spec = ScoringSpec((8, 8), "sum", 0.0, *Calibrator("f1").fit(scores, CATEGORIES, synthetic))
    assert ScoringSpec.from_json(spec.to_json()) == spec
    assert spec.to_dict()["rule"].startswith("z-score of held-out good images")


def test_unknown_rule_and_f1_without_synthetic_scores_are_errors() -> None:
    with pytest.raises(ConfigError, match="unknown calibration 'median'"):
        Calibrator("median")
    with pytest.raises(ConfigError, match="needs scores of synthetic anomalies"):
        Calibrator("f1").fit(_inputs()[0], CATEGORIES)
