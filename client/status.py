"""`dcam-client status`: the line as Triton's metrics endpoint tells it, for a person at a
terminal. Reads the per-product metrics the judging models publish (core/drift.py names them)
and Triton's own queue time, with prometheus_client's parser of the exposition format.
"""

from __future__ import annotations

import http.client
import math
import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from dcam.core import drift
from dcam.core.errors import ClientError
from dcam.core.names import ENTRY_MODELS

QUEUE_US, REQUESTS = "nv_inference_queue_duration_us", "nv_inference_request_success"


def scrape(url: str, timeout_s: float = 5.0) -> str:
    """The metrics page at `url` (http://host:8002/metrics)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        # ValueError: a malformed URL, or a body that is not UTF-8 (UnicodeDecodeError)
        raise ClientError(f"cannot read metrics from {url}: {exc!r}") from exc


def _base(name: str) -> str:
    """A name without the `_total` that the parser adds to (or finds on) every counter sample."""
    return name.removesuffix("_total")


def _samples(text: str) -> list[tuple[str, dict, float]]:
    try:
        return [
            (_base(s.name), s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except ValueError as exc:
        raise ClientError(f"not a Prometheus metrics page: {exc}") from exc


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, linear within a bucket (as PromQL's
    histogram_quantile); None when empty."""
    edges = sorted(buckets)
    total = buckets[edges[-1]] if edges else 0.0
    if not total:
        return None
    rank, lower, below = q * total, edges[0] if edges[0] < 0 else 0.0, 0.0
    for edge in edges:
        if buckets[edge] >= rank:
            if math.isinf(edge):
                return lower  # above the highest finite bucket: its edge is all we know
            inside = buckets[edge] - below
            return lower + (edge - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = edge, buckets[edge]
    return lower


def line_status(text: str) -> dict:
    """Per product: images, flagged, anomaly rate, median score, drift PSI, window, alarm, mean
    normal score; and Triton's mean queue time per request of the models requests enter."""
    products: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    queue_us = requests = 0.0
    ours = {_base(name): name for name in drift.METRICS}
    for name, labels, value in _samples(text):
        if name == f"{drift.SCORES}_bucket":
            buckets[labels["category"]][float(labels["le"])] = value
        elif name in ours and "category" in labels:  # drift gauges: one series per instance
            products[labels["category"]][ours[name]].append(value)
        elif name in (QUEUE_US, REQUESTS) and labels.get("model") in ENTRY_MODELS:
            queue_us += value if name == QUEUE_US else 0.0
            requests += value if name == REQUESTS else 0.0
    rows = {}
    for product, series in sorted(products.items()):
        images, flagged = sum(series[drift.IMAGES]), sum(series[drift.FLAGGED])
        means = series[drift.NORMAL_MEAN]
        rows[product] = {
            "images": int(images),
            "flagged": int(flagged),
            "anomaly_rate": flagged / images if images else None,
            "median_score": histogram_quantile(buckets[product], 0.5),
            # Instances keep their own windows: the line drifts if any of them says so.
            "drift_psi": max(series[drift.PSI], default=0.0),
            "drift_window": int(max(series[drift.WINDOW], default=0.0)),
            "drift_alarm": bool(max(series[drift.ALARM], default=0.0)),
            "normal_score_mean": sum(means) / len(means) if means else 0.0,
        }
    return {
        "products": rows,
        "queue_ms_per_request": queue_us / requests / 1000 if requests else None,
    }


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_status(status: dict) -> str:
    """A compact table per product, then Triton's queue time."""
    header = f"{'product':<16}{'images':>9}{'flagged':>9}{'rate':>8}{'median z':>10}"
    header += f"{'drift PSI':>11}{'window':>8}  alarm"
    lines = [header]
    for product, row in status["products"].items():
        rate = None if row["anomaly_rate"] is None else 100 * row["anomaly_rate"]
        lines.append(
            f"{product:<16}{row['images']:>9}{row['flagged']:>9}{_cell(rate, '.1f') + '%':>8}"
            f"{_cell(row['median_score'], '.2f'):>10}{row['drift_psi']:>11.3f}"
            f"{row['drift_window']:>8}  {'DRIFT' if row['drift_alarm'] else 'ok'}"
        )
    if not status["products"]:
        lines.append("(no images scored yet, or line metrics are off in this build)")
    queue = status["queue_ms_per_request"]
    lines.append(f"queue time per request (since start): {_cell(queue, '.1f')} ms")
    return "\n".join(lines)
