"""Score normalisation and decision thresholds from held-out good images, per product and global.

Written into the manifest; the served model applies them (core/scoring.py). Two rules, both for
a stated false positive rate (FPR) on good parts:

- `gumbel` (default): an image's score is the maximum of its anomaly map, and maxima follow the
  extreme-value (Gumbel) law. Fitted by moments to the held-out scores, its (1 - FPR) quantile in
  z-units is the constant (sqrt(6)/pi) * (-ln(-ln(1 - FPR)) - Euler's gamma): 3.14 for 1%. Every
  held-out image informs the threshold through the mean and std, where an empirical 0.99
  quantile of a handful of images is just their maximum.
- `quantile`: the empirical (1 - FPR) quantile of the held-out z-scores (needs many images).

Each product's std is shrunk toward the pooled within-product std by `prior_images`
pseudo-images, so a product with few held-out images cannot get a near-zero std (and z-scores
in the thousands); the global calibration pools all products.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dcam.core.errors import ConfigError
from dcam.core.scoring import Calibration
from dcam.training.config import CALIBRATION_METHODS

EULER_GAMMA = 0.5772156649015329
_STD_FLOOR = 1e-6


def gumbel_z_threshold(target_fpr: float) -> float:
    """The Gumbel law's (1 - target_fpr) quantile in z-units (moments fit)."""
    return math.sqrt(6) / math.pi * (-math.log(-math.log1p(-target_fpr)) - EULER_GAMMA)


def z_threshold(method: str, target_fpr: float, z_values: np.ndarray) -> float:
    if method == "gumbel":
        return gumbel_z_threshold(target_fpr)
    if method == "quantile":
        return float(np.quantile(z_values, 1.0 - target_fpr))
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
) -> dict:
    """Calibration per product and global from held-out good images' raw scores.

    Returns the manifest's `normalization` section: `method`, `global`, `per_category`, each
    calibration with mean, std, threshold (on the z-score), n and the expected FPR.
    """
    scores, cats = np.asarray(scores, np.float64), np.asarray(categories)
    pooled = _pooled_within_std(scores, cats)

    def stats(values: np.ndarray, prior: float) -> dict:
        n = len(values)
        var = (n * values.var() + prior * pooled**2) / (n + prior)
        mean, std = float(values.mean()), float(max(math.sqrt(var), _STD_FLOOR))
        z = np.asarray(Calibration(mean, std, 0.0).normalise(values))
        threshold = z_threshold(method, target_fpr, z)
        return {"mean": mean, "std": std, "threshold": threshold, "n": n, "fpr": target_fpr}

    rule = (
        f"Gumbel fit, threshold z > {gumbel_z_threshold(target_fpr):.3f}"
        if method == "gumbel"
        else f"empirical {1 - target_fpr:g} quantile of held-out z-scores"
    )
    return {
        "method": (
            f"z-score of held-out good images (per-product std shrunk toward the pooled std by "
            f"{prior_images:g} pseudo-images); {rule}; expected false positive rate {target_fpr:g}"
        ),
        "global": stats(scores, 0.0),
        "per_category": {c: stats(scores[cats == c], prior_images) for c in sorted(set(cats))},
    }


def threshold_note(calibration: dict) -> str:
    """One line for the report: the thresholds and the false positive rate they are set for."""
    per = calibration["per_category"]
    thresholds = ", ".join(f"{c} {v['threshold']:.2f}" for c, v in per.items())
    return (
        f"\nDecision threshold (z-score, per product): {thresholds}; global "
        f"{calibration['global']['threshold']:.2f}. Rule: {calibration['method']}.\n"
    )
