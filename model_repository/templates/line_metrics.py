"""Per-product line metrics on Triton's metrics port, through the Python backend's metrics API
(`pb_utils.MetricFamily`), beside Triton's own `nv_*` metrics.

The models that judge images (postprocess, and calibrate in the fused layout) hand each
request's normalised scores and decisions to `LineMetrics.observe`, then call `publish` once per
batch. Metric names, kinds, buckets and the drift rule come from `drift.py`, which the build
copies beside this file. A product's metrics exist from its first image. Requests that name no
product are labelled "unknown". A request naming a product the model does not know is refused
before this point, so the labels are bounded by the products in the manifest.

Counters and the histogram are shared by a model's instances, so Triton sums them. Each instance
keeps its own drift window, so the drift gauges carry a `model_instance` label as well (not
`instance`, which Prometheus sets to the scraped target). Dashboards and `dcam-client status`
take the largest PSI and the alarm of any instance.

Triton's warm-up requests are left uncounted (`drift.warm_up_images` says how). If the Python
backend restarts a crashed stub, `initialize` runs again without a warm-up, and that many real
images go uncounted once.
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

    def __init__(self, families, label, instance, spec, calibration):
        labels = {"category": label}
        self.metrics = {}
        for name, family in families.items():
            if name == drift.SCORES:
                self.metrics[name] = family.Metric(labels=labels, buckets=list(drift.SCORE_BUCKETS))
            elif name in drift.PER_INSTANCE:
                self.metrics[name] = family.Metric(labels={**labels, "model_instance": instance})
            else:
                self.metrics[name] = family.Metric(labels=labels)
        self.threshold = calibration.threshold
        self.window = drift.DriftWindow(spec, calibration)
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
        reading = self.window.reading()  # the PSI once per batch, not once per gauge
        self.metrics[drift.PSI].set(reading.psi)
        self.metrics[drift.WINDOW].set(float(reading.filled))
        self.metrics[drift.ALARM].set(1.0 if reading.alarm else 0.0)
        self.metrics[drift.NORMAL_MEAN].set(reading.mean)
        self.scores, self.flagged = [], 0


def _check_laws(spec, scoring_spec):
    """Draw every calibration's drift law at load: a threshold it cannot be drawn under (the
    Gumbel law has no mass left below it, about z < -5.6) fails the load, and Triton keeps
    serving the version before, instead of failing every request of that product."""
    for category in (None, *scoring_spec.per_category):
        calibration = scoring_spec.calibration_for(category)
        try:
            drift.DriftWindow(spec, calibration)
        except (ValueError, OverflowError) as exc:
            raise ValueError(
                f"{category or 'global'} threshold {calibration.threshold}: its drift law "
                f"cannot be drawn below it ({exc}); raise the threshold or build with "
                "--no-line-metrics"
            ) from exc


class LineMetrics:
    def __init__(self, spec, scoring_spec, config, instance):
        """`spec`: the drift rule; `scoring_spec`: the calibrations whose thresholds cut off
        each product's reference law; `config`: the model's config (its warm-up); `instance`:
        this instance's name, the `model_instance` label of its drift gauges."""
        self.spec, self.scoring_spec, self.instance = spec, scoring_spec, instance
        self.warm_up_left = drift.warm_up_images(config)
        family = pb_utils.MetricFamily  # the stub adds it after importing model.py's modules
        if not hasattr(family, "HISTOGRAM"):
            raise RuntimeError(
                "this Triton's Python backend has no histogram metrics (Triton 2.51, container "
                "24.10, has them): use a newer container or build with --no-line-metrics"
            )
        kinds = {"counter": family.COUNTER, "gauge": family.GAUGE, "histogram": family.HISTOGRAM}
        self.families = {
            name: family(name=name, description=text, kind=kinds[kind])
            for name, (kind, text) in drift.METRICS.items()
        }
        self.products = {}
        _check_laws(spec, scoring_spec)

    def observe(self, category, scores, decisions):
        """Count one request's images under its product; those under the product's calibrated
        threshold enter its drift window."""
        if self.warm_up_left > 0:
            self.warm_up_left -= len(_numpy(scores))
            return
        label = category or drift.UNKNOWN_CATEGORY
        product = self.products.get(label)
        if product is None:
            calibration = self.scoring_spec.calibration_for(category)
            product = _Product(self.families, label, self.instance, self.spec, calibration)
            self.products[label] = product
        scores, flagged = _numpy(scores).astype(np.float64), _numpy(decisions).astype(bool)
        product.scores.append(scores)
        product.flagged += int(flagged.sum())
        # What the calibrated threshold would not flag, whatever threshold the request asked
        # for: the reference law is cut off there.
        product.window.add(scores[scores <= product.threshold])

    def publish(self):
        for product in self.products.values():
            product.publish()
