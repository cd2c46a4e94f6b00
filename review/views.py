"""What a product's page shows, computed off the event loop: its queue, the confusion at the
served threshold, the fit asked for, and the charts."""

from __future__ import annotations

from dcam.core.errors import DcamError
from dcam.review import charts, fit
from dcam.review.station import Station


def product_context(station: Station, product: str | None, target: str, rate: str | None):
    """What a product's page shows: its queue, the confusion now, the fit asked for, charts."""
    fitted, error = None, None
    if rate is not None:
        try:
            fitted = station.fit(product, target, float(rate))
        except (DcamError, ValueError) as exc:
            error = str(exc)
    labels = station.labels()
    parts = station.fit_parts(product, labels)
    threshold = station.threshold(product)
    queue = station.queue(product)
    both = {p.label for p in parts} >= {"good", "defect"}  # the ROC: both kinds labelled
    return {
        "parts": station.run.of_product(product),
        "labels": labels,
        "flagged": [p for p in queue if p.flagged],
        "borderline": [p for p in queue if not p.flagged],
        "threshold": threshold,
        "confusion": None
        if threshold is None
        else fit.confusion(parts, threshold, station.config.presume_passed_good),
        "fitted": fitted,
        "fit_error": error,
        "rate": rate or station.config.false_call_rate,
        "labels_digest": station.store.digest(),
        "histogram": charts.histogram(parts, threshold, fitted.threshold if fitted else None),
        "roc": charts.roc_curve(
            fit.roc(parts, station.config.presume_passed_good) if both else None
        ),
        "boundary": station.served_boundary(product),
        "synthetic": station.synthetic().get(product),
    }
