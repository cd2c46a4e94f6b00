"""Line drift, written once: are a product's recent normal scores still distributed the way its
calibration says?

The calibration (calibration.py) standardises each product's image scores by the mean and std
of its held-out good images, and says which law their z-scores follow: the extreme-value
(Gumbel) law with mean 0 and std 1, since an image's score is the maximum of its anomaly map.
The reference is that law cut off at the product's threshold (`Calibration.law_edges`), because
only parts that were not flagged enter the window.

The statistic is the population stability index (PSI) of the last `window` z-scores under the
product's calibrated threshold (the parts it does not flag, whatever threshold a request asks
for), over `bins` bins that hold equal shares of the reference:

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

where a_i is the window's share in bin i and e_i = 1 / bins. It is only reported once the window
is full.

The alarm level. On an unchanged line that follows the reference law, N * PSI roughly follows a
chi-square law with bins - 1 degrees of freedom. For 256 images and 10 bins, that makes the PSI
about 0.035 on average and 0.11 at its 99.9th percentile. A real line departs from the reference
even when nothing changed:
- its calibration comes from few held-out images, so the mean and std it standardises with are
  off by about 1/sqrt(n) and 1/sqrt(2n) of a std;
- its scores need not be Gumbel-shaped: normal-shaped scores alone give a PSI of 0.06.
Normal-shaped scores with the mean off by 0.3 std and the std by 15% give 0.21. Ten stable
synthetic lines, calibrated on 20 images per product, measured 0.03 to 0.43
(benchmarks/README.md, "Drift on synthetic lines"). The highest of them had its mean off by 0.57
std. A move of half a std of the normal parts' scores gives about 0.4, and a whole std 1.7. So
the default alarm is 0.5, not the 0.25 of credit-scoring lore. It leaves little room above a
badly calibrated product. Lower it where the calibration used many images, and raise it where
a stable line's PSI sits near it.

A dirty lens, new lighting or another supplier's material move every part's score, up or down
(brighter synthetic parts scored lower). The window's scores then bunch into some bins, and the
PSI rises before operators start raising the threshold by hand. A shift so large that most parts
are flagged stops the window from filling: the anomaly rate shows that case, and the alert
rules in deploy/monitoring watch both.

Copied beside the Triton Python models at build time, like scoring.py: numpy and its siblings
only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

if __package__:  # imported as dcam.core.drift
    from dcam.core.calibration import Calibration, ConfigError
else:  # a copy beside a Triton model: always its sibling, even where dcam is installed
    from calibration import Calibration, ConfigError  # type: ignore[no-redef]

DRIFT_PARAMETER = "line_metrics"  # model-config parameter carrying DriftSpec as JSON
UNKNOWN_CATEGORY = "unknown"  # the label of requests that name no product

# The names served on Triton's metrics port, beside Triton's own: (kind, unit and meaning).
IMAGES = "dcam_images_total"
FLAGGED = "dcam_images_flagged_total"
SCORES = "dcam_normalized_score"
PSI = "dcam_drift_psi"
WINDOW = "dcam_drift_window_images"
ALARM = "dcam_drift_alarm"
NORMAL_MEAN = "dcam_normal_score_mean"
METRICS = {
    IMAGES: ("counter", "Images scored, per product (category request parameter)"),
    FLAGGED: ("counter", "Images judged anomalous (score above the threshold), per product"),
    SCORES: ("histogram", "Normalised image scores (z units of the product's calibration)"),
    PSI: ("gauge", "Population stability index of the last z-scores under the calibrated "
          "threshold against the calibration's law (0 until the window is full)"),
    WINDOW: ("gauge", "Images in the drift window (at most the window size)"),
    ALARM: ("gauge", "1 when the drift PSI is at or above the alarm level, else 0"),
    NORMAL_MEAN: ("gauge", "Mean z-score of the images in the drift window "
                  "(0 on a line like the calibration images)"),
}  # fmt: skip
# Each instance of a judging model keeps its own window: these carry a `model_instance` label
# too (not `instance`, which is Prometheus' own target label).
PER_INSTANCE = (PSI, WINDOW, ALARM, NORMAL_MEAN)
# Histogram buckets of the normalised score, in z units: the calibration's good parts sit
# around 0, the default threshold is 3.14 (1% false positives), defects score far above.
SCORE_BUCKETS = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0)


@dataclass(frozen=True)
class DriftSpec:
    """How the served models watch a line; the build writes it into their configs."""

    window: int = 256  # images per product (under its threshold) the statistic is over
    bins: int = 10  # equal-probability bins of the reference law
    alarm: float = 0.5  # PSI at or above which the product's drift alarm is on (see above)

    def __post_init__(self) -> None:
        if self.window < 2 * self.bins or self.bins < 2 or self.alarm <= 0:
            raise ConfigError(
                f"drift needs bins >= 2, window >= 2 * bins and alarm > 0, got {self}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DriftSpec:
        return cls(**json.loads(text))


def psi(values: np.ndarray, edges: np.ndarray) -> float:
    """PSI of `values` against equal shares in the bins `edges` bound. Half an image is added
    to every bin, so an empty bin costs a finite amount."""
    bins = len(edges) + 1
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=bins)
    actual = (counts + 0.5) / (len(values) + 0.5 * bins)
    expected = 1.0 / bins
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftReading(NamedTuple):
    """What a window says now, computed once: its PSI, whether that is an alarm, how many
    images it holds and their mean z-score."""

    psi: float
    alarm: bool
    filled: int
    mean: float


class DriftWindow:
    """The last `spec.window` z-scores of one product under its calibrated threshold, and their
    PSI against the law its calibration states."""

    def __init__(self, spec: DriftSpec, calibration: Calibration) -> None:
        self.spec = spec
        self.edges = calibration.law_edges(spec.bins)
        self.values = np.zeros(spec.window, np.float64)
        self.count = 0  # images ever added; the ring holds the last `window` of them

    def add(self, normal_scores: np.ndarray) -> None:
        values = np.asarray(normal_scores, np.float64).ravel()
        skipped = max(0, len(values) - self.spec.window)  # pushed out by the rest at once
        self.count += skipped
        for value in values[skipped:]:
            self.values[self.count % self.spec.window] = value
            self.count += 1

    @property
    def filled(self) -> int:
        return min(self.count, self.spec.window)

    def statistic(self) -> float:
        """The PSI once the window is full, else 0."""
        if self.count < self.spec.window:
            return 0.0
        return psi(self.values, self.edges)

    def alarm(self) -> bool:
        return self.reading().alarm

    def mean(self) -> float:
        return float(self.values[: self.filled].mean()) if self.count else 0.0

    def reading(self) -> DriftReading:
        value = self.statistic()
        return DriftReading(value, value >= self.spec.alarm, self.filled, self.mean())


def warm_up_images(config: dict) -> int:
    """Images Triton's warm-up sends each instance of a model with this (JSON) config; a
    sample's `count` of 0 means once. The judging models leave that many uncounted: warm-up
    requests carry no id or parameters, but they come before any client's, because a model is
    only reachable once it is ready."""
    return sum(
        int(sample.get("batch_size", 1)) * max(int(sample.get("count", 0)), 1)
        for sample in config.get("model_warmup", [])
    )
