"""The decision, owned once: statistics and thresholds fitted on held-out good images, applied
to raw image scores, and explained (a heatmap scale, the law drift compares a line against).

`Calibrator` fits, from the raw scores of held-out good images, one `Calibration` per product
and a global one (mean, std, threshold on the z-score, n). Three threshold rules:

- `gumbel` (default): an image's score is the maximum of its anomaly map, and maxima follow the
  extreme-value (Gumbel) law. Fitted by moments to the held-out scores, its (1 - FPR) quantile in
  z-units is the constant (sqrt(6)/pi) * (-ln(-ln(1 - FPR)) - Euler's gamma): 3.14 for 1%. Every
  held-out image informs the threshold through the mean and std, where an empirical 0.99
  quantile of a handful of images is just their maximum.
- `quantile`: the empirical (1 - FPR) quantile of the held-out z-scores (needs many images).
- `f1`: the threshold that best separates the held-out good images from synthetic anomalies made
  from them (datasets/anomalies.py, CutPaste), by F1; the FPR is then what it turns out to be.

Each product's std is shrunk toward the pooled within-product std by `prior_images`
pseudo-images, so a product with few held-out images cannot get a near-zero std (and z-scores
in the thousands); the global calibration pools all products. Whatever the rule, good parts'
z-scores are taken to follow the standard Gumbel law: drift (drift.py) compares a line with it.

The calibrations travel with the model inside the scoring record (scoring.py `ScoringSpec`).
Copied beside the Triton Python models at build time, like scoring.py: numpy and siblings only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

if __package__:  # imported as dcam.core.calibration
    from dcam.core import anomaly_map as amap
    from dcam.core.errors import ConfigError
else:  # a copy beside a Triton model: always its sibling, even where dcam is installed
    import anomaly_map as amap  # type: ignore[no-redef]

    class ConfigError(ValueError):  # type: ignore[no-redef]
        """A bad setting or request parameter."""


CALIBRATION_METHODS = ("gumbel", "quantile", "f1")
EULER_GAMMA = 0.5772156649015329
GUMBEL_BETA = math.sqrt(6.0) / math.pi  # the scale of a Gumbel law with std 1
GUMBEL_MU = -EULER_GAMMA * GUMBEL_BETA  # its location when its mean is 0
_EPS = 1e-8
_STD_FLOOR = 1e-6


def gumbel_z_quantile(p: float) -> float:
    """The p-quantile of the Gumbel law with mean 0 and std 1."""
    return GUMBEL_MU - GUMBEL_BETA * math.log(-math.log(p))


def gumbel_z_cdf(z: float) -> float:
    return math.exp(-math.exp(-(z - GUMBEL_MU) / GUMBEL_BETA))


def gumbel_z_threshold(target_fpr: float) -> float:
    """The Gumbel law's (1 - target_fpr) quantile in z-units (moments fit)."""
    return gumbel_z_quantile(1.0 - target_fpr)


def _standardise(values: Any, mean: float, std: float) -> Any:
    return (values - mean) / max(std, _EPS)


@dataclass(frozen=True)
class Calibration:
    """Held-out good images' score statistics: the z-score and the threshold on it."""

    mean: float
    std: float
    threshold: float  # on the normalised (z) score
    n: int = 0  # how many good images the statistics come from

    def normalise(self, scores: Any) -> Any:
        """Standardise raw image scores (z-scores), in float32 (numpy arrays or torch tensors)."""
        return _standardise(amap._float32(scores), self.mean, self.std)

    def normalise_float64(self, scores: Any) -> np.ndarray:
        """The same in float64 numpy, as the thresholds on synthetic anomalies are fitted."""
        return _standardise(np.asarray(scores, np.float64), self.mean, self.std)

    def heatmap_scale(self, margin: float = 3.0) -> tuple[float, float, float]:
        """(low, high, at_threshold) in raw anomaly-map units: `margin` std below good parts'
        mean (not below 0), `margin` std past the threshold, and the threshold itself. A pixel
        at the threshold level makes an image score exactly the threshold (the image score is
        the map's maximum)."""
        at_threshold = self.mean + self.threshold * self.std
        low = max(self.mean - margin * self.std, 0.0)
        return low, at_threshold + margin * self.std, at_threshold

    def law_edges(self, bins: int) -> np.ndarray:
        """Inner edges of `bins` bins holding equal shares of the law of good parts' z-scores
        (standard Gumbel) below the threshold: the reference drift compares a line with. A score
        past an edge goes to the bin above, so scores at or above the threshold fall in the
        last bin."""
        top = gumbel_z_cdf(self.threshold)
        return np.array([gumbel_z_quantile(top * i / bins) for i in range(1, bins)])

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "threshold": self.threshold, "n": self.n}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Calibration:
        try:
            return cls(
                float(values["mean"]),
                float(values["std"]),
                float(values["threshold"]),
                int(values.get("n", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"calibration needs numeric mean, std, threshold: {exc}") from exc


def decide(normalised: Any, threshold: float) -> Any:
    """True where a normalised score exceeds the decision threshold."""
    return normalised > threshold


def judge(calibration: Calibration, raw: Any, threshold: float | None = None) -> tuple[Any, Any]:
    """Raw image scores -> (normalised scores, decisions) under one calibration."""
    normalised = calibration.normalise(raw)
    limit = calibration.threshold if threshold is None else float(threshold)
    return normalised, decide(normalised, limit)


def f1_z_threshold(good: np.ndarray, anomalous: np.ndarray) -> float:
    """The threshold on z-scores maximising F1 of anomalous (positive) against good images."""
    candidates = np.unique(np.concatenate([good, anomalous]))
    best, best_f1 = float(candidates[-1]), -1.0
    for low, high in itertools.pairwise(candidates):
        t = (low + high) / 2
        tp, fp = int(decide(anomalous, t).sum()), int(decide(good, t).sum())
        f1 = 2 * tp / (2 * tp + fp + (len(anomalous) - tp))
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


class Fitted(NamedTuple):
    """A calibrator's result, in `ScoringSpec`'s order after size, combine and sigma."""

    calibration: Calibration  # global
    per_category: dict[str, Calibration]
    rule: str  # how the thresholds were chosen, for people


@dataclass(frozen=True)
class Calibrator:
    """Fits per-product and global calibrations with one threshold rule."""

    method: str = "gumbel"
    target_fpr: float = 0.01  # the stated false positive rate of `gumbel` and `quantile`
    prior_images: float = 2.0  # pseudo-images shrinking a product's std toward the pooled one

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration {self.method!r}; choose one of {list(CALIBRATION_METHODS)}"
            )

    def fit(
        self,
        scores: np.ndarray,
        categories: Sequence[str],
        synthetic: np.ndarray | None = None,
    ) -> Fitted:
        """Calibrations from held-out good images' raw scores.

        Args:
            synthetic: raw scores of one synthetic anomaly per held-out image (same order),
                needed by the `f1` rule.
        """
        scores, cats = np.asarray(scores, np.float64), np.asarray(categories)
        fake = None if synthetic is None else np.asarray(synthetic, np.float64)
        pooled = _pooled_within_std(scores, cats)

        def fit_one(sel: np.ndarray, prior: float) -> Calibration:
            stats = _statistics(scores[sel], pooled, prior)
            z_fake = None if fake is None else stats.normalise_float64(fake[sel])
            threshold = self.z_threshold(np.asarray(stats.normalise(scores[sel])), z_fake)
            return Calibration(stats.mean, stats.std, threshold, stats.n)

        return Fitted(
            fit_one(np.ones(len(scores), bool), 0.0),
            {c: fit_one(cats == c, self.prior_images) for c in sorted(set(cats))},
            self.rule(),
        )

    def z_threshold(self, z_values: np.ndarray, z_synthetic: np.ndarray | None = None) -> float:
        """The rule's threshold on z-scores of good images (and of synthetic anomalies)."""
        if self.method == "gumbel":
            return gumbel_z_threshold(self.target_fpr)
        if self.method == "quantile":
            return float(np.quantile(z_values, 1.0 - self.target_fpr))
        if z_synthetic is None or not len(z_synthetic):
            raise ConfigError("calibration 'f1' needs scores of synthetic anomalies")
        return f1_z_threshold(z_values, z_synthetic)

    def rule(self) -> str:
        fpr = self.target_fpr
        rule = {
            "gumbel": f"Gumbel fit, threshold z > {gumbel_z_threshold(fpr):.3f}; expected "
            f"false positive rate {fpr:g}",
            "quantile": f"empirical {1 - fpr:g} quantile of held-out z-scores; expected false "
            f"positive rate {fpr:g}",
            "f1": "threshold maximising F1 of synthetic anomalies (CutPaste) against held-out "
            "good images; no stated false positive rate",
        }[self.method]
        return (
            f"z-score of held-out good images (per-product std shrunk toward the pooled std by "
            f"{self.prior_images:g} pseudo-images); {rule}"
        )


def _pooled_within_std(scores: np.ndarray, cats: np.ndarray) -> float:
    """The std of scores around their own product's mean, over all products."""
    centred = np.concatenate([scores[cats == c] - scores[cats == c].mean() for c in set(cats)])
    return float(np.sqrt((centred**2).mean()))


def _statistics(values: np.ndarray, pooled: float, prior: float) -> Calibration:
    """Mean and std (shrunk toward `pooled` by `prior` pseudo-images); threshold still 0."""
    n = len(values)
    var = (n * values.var() + prior * pooled**2) / (n + prior)
    return Calibration(float(values.mean()), float(max(math.sqrt(var), _STD_FLOOR)), 0.0, n)
