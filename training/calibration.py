"""Training's use of the calibrator (core/calibration.py, which fits, applies and explains the
decision): a run's scoring record, the detection rate its thresholds reach on synthetic
anomalies, and the report's note on both.

The synthetic anomalies (datasets/anomalies.py, CutPaste) estimate the detection rate at the
threshold, whatever the rule: the only such estimate available before a real defect is seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dcam.core.calibration import Calibrator
from dcam.core.scoring import ScoringSpec, judge
from dcam.training.config import TrainConfig


def calibrate(
    cfg: TrainConfig,
    scores: np.ndarray,
    categories: Sequence[str],
    synthetic: np.ndarray | None = None,
) -> ScoringSpec:
    """The run's scoring record: its map settings and the calibrations fitted on held-out good
    images' raw scores (and one synthetic anomaly's per image, for the `f1` rule)."""
    fitted = Calibrator(cfg.calibration, cfg.target_fpr).fit(scores, categories, synthetic)
    return ScoringSpec((cfg.image_size, cfg.image_size), cfg.combine, cfg.sigma, *fitted)


def detection_estimate(spec: ScoringSpec, synthetic: np.ndarray, categories: Sequence[str]) -> dict:
    """The share of synthetic anomalies each product's threshold catches (and over all)."""
    synthetic, cats = np.asarray(synthetic, np.float64), np.asarray(categories)
    caught = np.zeros(len(synthetic), bool)
    per_category = {}
    for c, calibration in spec.per_category.items():
        sel = cats == c
        caught[sel] = np.asarray(judge(calibration, synthetic[sel])[1])
        per_category[c] = float(caught[sel].mean()) if sel.any() else None
    return {
        "method": "one CutPaste anomaly per held-out good image, scored by the trained model",
        "detection_rate": float(caught.mean()) if len(caught) else None,
        "per_category": per_category,
    }


def threshold_note(spec: ScoringSpec, estimate: dict) -> str:
    """For the report: the thresholds, their rule (and stated false positive rate), and the
    detection rate estimated on synthetic anomalies."""
    thresholds = ", ".join(f"{c} {v.threshold:.2f}" for c, v in spec.per_category.items())
    rates = ", ".join(f"{c} {100 * v:.0f}%" for c, v in estimate["per_category"].items())
    return (
        f"\nDecision threshold (z-score, per product): {thresholds}; global "
        f"{spec.calibration.threshold:.2f}. Rule: {spec.rule}.\n\n"
        f"Estimated detection rate on synthetic anomalies ({estimate['method']}): "
        f"{100 * estimate['detection_rate']:.0f}% ({rates}).\n"
    )
