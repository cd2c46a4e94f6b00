"""Score normalisation and decision thresholds from held-out good images, per product and global.

Written into the manifest; the served model applies them (core/scoring.py). Two rules, both for
a stated false positive rate (FPR) on good parts:

- `gumbel` (default): an image's score is the maximum of its anomaly map, and maxima follow the
  extreme-value (Gumbel) law. Fitted by moments to the held-out scores, its (1 - FPR) quantile in
  z-units is the constant (sqrt(6)/pi) * (-ln(-ln(1 - FPR)) - Euler's gamma): 3.14 for 1%. Every
  held-out image informs the threshold through the mean and std, where an empirical 0.99
  quantile of a handful of images is just their maximum.
- `quantile`: the empirical (1 - FPR) quantile of the held-out z-scores (needs many images).
- `f1`: the threshold that best separates the held-out good images from synthetic anomalies made
  from them (datasets/anomalies.py, CutPaste), by F1: an operating point for lines that value
  catching defects over a stated false positive rate; the FPR is then what it turns out to be.

Whatever the rule, the synthetic anomalies also estimate the detection rate at the threshold
(`detection_estimate`), the only such estimate available before a real defect is seen.

Each product's std is shrunk toward the pooled within-product std by `prior_images`
pseudo-images, so a product with few held-out images cannot get a near-zero std (and z-scores
in the thousands); the global calibration pools all products.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from dcam.core.drift import gumbel_z_quantile
from dcam.core.errors import ConfigError
from dcam.core.scoring import Calibration
from dcam.training.config import CALIBRATION_METHODS

_STD_FLOOR = 1e-6


def gumbel_z_threshold(target_fpr: float) -> float:
    """The Gumbel law's (1 - target_fpr) quantile in z-units (moments fit); the served models'
    drift reference (core/drift.py) is the same law."""
    return gumbel_z_quantile(1.0 - target_fpr)


def f1_z_threshold(good: np.ndarray, anomalous: np.ndarray) -> float:
    """The threshold on z-scores maximising F1 of anomalous (positive) against good images."""
    candidates = np.unique(np.concatenate([good, anomalous]))
    best, best_f1 = float(candidates[-1]), -1.0
    for low, high in itertools.pairwise(candidates):
        t = (low + high) / 2
        tp, fp = int((anomalous > t).sum()), int((good > t).sum())
        f1 = 2 * tp / (2 * tp + fp + (len(anomalous) - tp))
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def z_threshold(
    method: str, target_fpr: float, z_values: np.ndarray, z_synthetic: np.ndarray | None = None
) -> float:
    if method == "gumbel":
        return gumbel_z_threshold(target_fpr)
    if method == "quantile":
        return float(np.quantile(z_values, 1.0 - target_fpr))
    if method == "f1":
        if z_synthetic is None or not len(z_synthetic):
            raise ConfigError("calibration 'f1' needs scores of synthetic anomalies")
        return f1_z_threshold(z_values, z_synthetic)
    raise ConfigError(f"unknown calibration {method!r}; choose one of {list(CALIBRATION_METHODS)}")


def _pooled_within_std(scores: np.ndarray, cats: np.ndarray) -> float:
    """The std of scores around their own product's mean, over all products."""
    centred = np.concatenate([scores[cats == c] - scores[cats == c].mean() for c in set(cats)])
    return float(np.sqrt((centred**2).mean()))


def calibrate(
    scores: np.ndarray,
    categories: Sequence[str],
    method: str = "gumbel",
    target_fpr: float = 0.01,
    prior_images: float = 2.0,
    synthetic: np.ndarray | None = None,
) -> dict:
    """Calibration per product and global from held-out good images' raw scores.

    Args:
        synthetic: raw scores of one synthetic anomaly per held-out image (same order), for
            the `f1` rule.

    Returns the manifest's `normalization` section: `method`, `global`, `per_category`, each
    calibration with mean, std, threshold (on the z-score) and n.
    """
    scores, cats = np.asarray(scores, np.float64), np.asarray(categories)
    pooled = _pooled_within_std(scores, cats)
    fake = None if synthetic is None else np.asarray(synthetic, np.float64)

    def stats(sel: np.ndarray, prior: float) -> dict:
        values = scores[sel]
        n = len(values)
        var = (n * values.var() + prior * pooled**2) / (n + prior)
        mean, std = float(values.mean()), float(max(math.sqrt(var), _STD_FLOOR))
        z = np.asarray(Calibration(mean, std, 0.0).normalise(values))
        z_fake = None if fake is None else (fake[sel] - mean) / std
        threshold = z_threshold(method, target_fpr, z, z_fake)
        return {"mean": mean, "std": std, "threshold": threshold, "n": n}

    rule = {
        "gumbel": f"Gumbel fit, threshold z > {gumbel_z_threshold(target_fpr):.3f}; expected "
        f"false positive rate {target_fpr:g}",
        "quantile": f"empirical {1 - target_fpr:g} quantile of held-out z-scores; expected false "
        f"positive rate {target_fpr:g}",
        "f1": "threshold maximising F1 of synthetic anomalies (CutPaste) against held-out good "
        "images; no stated false positive rate",
    }[method]
    return {
        "method": (
            f"z-score of held-out good images (per-product std shrunk toward the pooled std by "
            f"{prior_images:g} pseudo-images); {rule}"
        ),
        "global": stats(np.ones(len(scores), bool), 0.0),
        "per_category": {c: stats(cats == c, prior_images) for c in sorted(set(cats))},
    }


def detection_estimate(calibration: dict, synthetic: np.ndarray, categories: Sequence[str]) -> dict:
    """The share of synthetic anomalies each product's threshold catches (and over all)."""
    synthetic, cats = np.asarray(synthetic, np.float64), np.asarray(categories)
    caught = np.zeros(len(synthetic), bool)
    per_category = {}
    for c, values in calibration["per_category"].items():
        sel = cats == c
        cal = Calibration.from_dict(values)
        caught[sel] = np.asarray(cal.normalise(synthetic[sel])) > cal.threshold
        per_category[c] = float(caught[sel].mean()) if sel.any() else None
    return {
        "method": "one CutPaste anomaly per held-out good image, scored by the trained model",
        "detection_rate": float(caught.mean()) if len(caught) else None,
        "per_category": per_category,
    }


def threshold_note(calibration: dict, estimate: dict) -> str:
    """For the report: the thresholds, their rule (and stated false positive rate), and the
    detection rate estimated on synthetic anomalies."""
    per = calibration["per_category"]
    thresholds = ", ".join(f"{c} {v['threshold']:.2f}" for c, v in per.items())
    rates = ", ".join(f"{c} {100 * v:.0f}%" for c, v in estimate["per_category"].items())
    return (
        f"\nDecision threshold (z-score, per product): {thresholds}; global "
        f"{calibration['global']['threshold']:.2f}. Rule: {calibration['method']}.\n\n"
        f"Estimated detection rate on synthetic anomalies ({estimate['method']}): "
        f"{100 * estimate['detection_rate']:.0f}% ({rates}).\n"
    )
