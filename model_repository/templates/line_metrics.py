"""Per-product line metrics on Triton's metrics port, through the Python backend's metrics API
(`pb_utils.MetricFamily`), beside Triton's own `nv_*` metrics.

The models that judge images (postprocess, and calibrate in the fused layout) hand each
request's normalised scores and decisions to `LineMetrics.observe`, then call `publish` once per
batch. Metric names, kinds, buckets and the drift rule come from `drift.py`, which the build
copies beside this file. A product's metrics exist from its first image. Requests that name no
product are labelled "unknown". A request naming a product the model does not know is refused
before this point, so the labels are bounded by the products in the manifest.

Triton's warm-up requests are left uncounted (`drift.warm_up_images` says how).
"""

import drift
import numpy as np
import triton_python_backend_utils as pb_utils


def _numpy(values):
    """Scores may be torch tensors on the GPU; the metrics are kept on the host."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values).ravel()


class _Product:
    """One product's metric handles, its drift window and the batch's pending counts."""

    def __init__(self, families, label, spec, threshold):
        labels = {"category": label}
        self.metrics = {
            name: family.Metric(labels=labels, buckets=list(drift.SCORE_BUCKETS))
            if name == drift.SCORES
            else family.Metric(labels=labels)
            for name, family in families.items()
        }
        self.window = drift.DriftWindow(spec, threshold)
        self.scores, self.flagged = [], 0

    def publish(self):
        if not self.scores:
            return
        scores = np.concatenate(self.scores)
        self.metrics[drift.IMAGES].increment(float(len(scores)))
        if self.flagged:
            self.metrics[drift.FLAGGED].increment(float(self.flagged))
        histogram = self.metrics[drift.SCORES]
        for value in scores:
            histogram.observe(float(value))
        self.metrics[drift.PSI].set(self.window.statistic())
        self.metrics[drift.WINDOW].set(float(self.window.filled))
        self.metrics[drift.ALARM].set(1.0 if self.window.alarm() else 0.0)
        self.metrics[drift.NORMAL_MEAN].set(self.window.mean())
        self.scores, self.flagged = [], 0


class LineMetrics:
    def __init__(self, spec, scoring_spec, config):
        """`spec`: the drift rule; `scoring_spec`: the calibrations whose thresholds cut off
        each product's reference law; `config`: the model's config (its warm-up)."""
        self.spec, self.scoring_spec = spec, scoring_spec
        self.warm_up_left = drift.warm_up_images(config)
        family = pb_utils.MetricFamily  # the stub adds it after importing model.py's modules
        kinds = {"counter": family.COUNTER, "gauge": family.GAUGE, "histogram": family.HISTOGRAM}
        self.families = {
            name: family(name=name, description=text, kind=kinds[kind])
            for name, (kind, text) in drift.METRICS.items()
        }
        self.products = {}

    def observe(self, category, scores, decisions):
        """Count one request's images under its product; unflagged ones enter the window."""
        if self.warm_up_left > 0:
            self.warm_up_left -= len(_numpy(scores))
            return
        label = category or drift.UNKNOWN_CATEGORY
        product = self.products.get(label)
        if product is None:
            threshold = self.scoring_spec.calibration_for(category).threshold
            product = _Product(self.families, label, self.spec, threshold)
            self.products[label] = product
        scores, flagged = _numpy(scores).astype(np.float64), _numpy(decisions).astype(bool)
        product.scores.append(scores)
        product.flagged += int(flagged.sum())
        product.window.add(scores[~flagged])

    def publish(self):
        for product in self.products.values():
            product.publish()
