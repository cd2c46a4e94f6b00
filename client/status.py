"""`dcam-client status`: the line as Triton's metrics tell it, for a person at a terminal. Reads
the per-product metrics the judging models publish (core/drift.py names them) and Triton's own
queue time, with prometheus_client's parser of the exposition format: from one metrics page,
from every pod behind a `dns:///` name (pages merged), or from Prometheus' HTTP query API
(summed over the pods it scrapes). Behind a Service one page is one pod, a different one each
call; the last two read the whole line.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from dcam.client.discovery import NameTarget, Resolver, is_name_target, resolve_addresses
from dcam.core import drift
from dcam.core.errors import ClientError
from dcam.core.names import ENTRY_MODELS
from dcam.core.network import address_url

QUEUE_US, REQUESTS = "nv_inference_queue_duration_us", "nv_inference_request_success"
# dns:///host:port or dns://authority/host:port, then an optional path (default /metrics)
NAME_URL = re.compile(r"^(dns:(?://[^/]*)?/*[^/]+)(/.*)?$")
Sample = tuple[str, dict, float]  # (name without _total, labels, value)


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


def _samples(text: str) -> list[Sample]:
    try:
        return [
            (_base(s.name), s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except ValueError as exc:
        raise ClientError(f"not a Prometheus metrics page: {exc}") from exc


def scrape_pods(url: str, resolver: Resolver | None = None, timeout_s: float = 5.0) -> list[str]:
    """The metrics page of every address `dns:///host:port[/path]` resolves to (the pods of a
    headless Service), read in parallel. Raises if the name resolves to nothing or any pod
    cannot be read: a line with a pod missing is not the line."""
    found = NAME_URL.match(url)
    if not found:
        raise ClientError(f"{url!r}: give the pods' metrics as dns:///host:port[/path]")
    target, path = NameTarget.parse(found.group(1)), found.group(2) or "/metrics"
    try:
        addresses = (resolver or resolve_addresses)(target.host, target.port)
    except OSError as exc:
        raise ClientError(f"cannot resolve {target.host}: {exc}") from exc
    if not addresses:
        raise ClientError(f"{target.host} resolves to no address: no pod to read")
    urls = [f"http://{address_url(a, target.port)}{path}" for a in addresses]
    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        pages = list(pool.map(_scrape_or_error, urls, [timeout_s] * len(urls)))
    failed = [str(page) for page in pages if isinstance(page, ClientError)]
    if failed:
        raise ClientError(
            f"read {len(urls) - len(failed)} of the {len(urls)} pods behind {target.host}; "
            + "; ".join(failed)
        )
    return [page for page in pages if isinstance(page, str)]


def _scrape_or_error(url: str, timeout_s: float) -> str | ClientError:
    """A pod's page, or why it cannot be read (so that the error names every pod that failed)."""
    try:
        return scrape(url, timeout_s)
    except ClientError as exc:
        return exc


def read_pages(url: str, resolver: Resolver | None = None) -> list[str]:
    """One metrics page for an http:// URL, every pod's for a dns:/// name."""
    return scrape_pods(url, resolver) if is_name_target(url) else [scrape(url)]


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


def line_status(*pages: str) -> dict:
    """Per product: images, flagged, anomaly rate, median score, drift PSI, window, alarm, mean
    normal score; and Triton's mean queue time per request of the models requests enter. Pages
    of several pods merge: counters and histograms add up, the drift gauges are taken as over
    the instances of one pod."""
    return _status((s for page in pages for s in _samples(page)), pods=len(pages), via="metrics")


def _status(samples: Iterable[Sample], pods: int, via: str, namespace: str | None = None) -> dict:
    products: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    queue_us = requests = 0.0
    ours = {_base(name): name for name in drift.METRICS}
    for name, labels, value in samples:
        if name == f"{drift.SCORES}_bucket":
            buckets[labels["category"]][float(labels["le"])] += value
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
        "pods": pods,  # whose figures these are
        "via": via,  # "metrics" (their pages) or "prometheus"
        "namespace": namespace,  # with Prometheus: the line's namespace, if its series have one
    }


def prometheus_queries(namespace: str | None = None) -> dict[str, str]:
    """PromQL for each series `line_status` reads, aggregated over pods per namespace as it
    aggregates pages: counters and buckets summed, PSI, window and alarm the largest, the
    normal mean averaged over instances; and the pods serving the line."""
    where = f"namespace={json.dumps(namespace)}" if namespace else ""  # a quoted PromQL string
    entry = f'model=~"{"|".join(ENTRY_MODELS)}"'

    def series(name: str, *matchers: str) -> str:
        return name + "{" + ",".join(m for m in (where, *matchers) if m) + "}"

    per_product = "namespace, category"
    queries = {
        _base(name): f"{how} by ({per_product}) ({series(name)})"
        for name, how in (
            (drift.IMAGES, "sum"), (drift.FLAGGED, "sum"), (drift.PSI, "max"),
            (drift.WINDOW, "max"), (drift.ALARM, "max"), (drift.NORMAL_MEAN, "avg"),
        )
    }  # fmt: skip
    bucket = f"{drift.SCORES}_bucket"
    queries[bucket] = f"sum by ({per_product}, le) ({series(bucket)})"
    for name in (QUEUE_US, REQUESTS):
        queries[name] = f"sum by (namespace, model) ({series(name, entry)})"
    pods = series("nv_inference_count", 'model="dcam"')  # one series per pod (its target)
    queries["pods"] = f"count by (namespace) (count by (namespace, instance) ({pods}))"
    return queries


def query_prometheus(url: str, promql: str, at: float, timeout_s: float = 10.0) -> list[dict]:
    """An instant query's vector (`[{"metric": {...}, "value": [t, "v"]}]`) at time `at`."""
    params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    endpoint = f"{url.rstrip('/')}/api/v1/query?{params}"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout_s) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # Prometheus says why in a JSON body
        raise ClientError(f"Prometheus at {url} refused {promql!r}: {_reason(exc)}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise ClientError(f"cannot query Prometheus at {url}: {exc!r}") from exc
    if reply.get("status") != "success" or reply["data"]["resultType"] != "vector":
        raise ClientError(f"Prometheus at {url} answered {promql!r} with {reply}")
    return reply["data"]["result"]


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["error"]
    except (ValueError, KeyError, OSError):
        return f"HTTP {error.code}"


def prometheus_status(url: str, namespace: str | None = None) -> dict:
    """`line_status` from Prometheus at `url` (http://prometheus:9090): every pod it scrapes,
    summed there. Raises if it holds no dcam pod, or several namespaces and none was named."""
    at = time.time()  # every figure at the same instant
    results = {
        name: query_prometheus(url, q, at) for name, q in prometheus_queries(namespace).items()
    }
    pods = results.pop("pods")
    namespaces = sorted({r["metric"].get("namespace", "") for r in pods})
    if not namespaces:
        where = f" in namespace {namespace}" if namespace else ""
        raise ClientError(
            f"Prometheus at {url} has no dcam pod{where} (nv_inference_count of model dcam): "
            "is the PodMonitor selected (its release label), and the namespace right?"
        )
    if len(namespaces) > 1:
        raise ClientError(
            f"Prometheus holds several dcam lines: give --namespace, one of {namespaces}"
        )
    samples = [
        (name, r["metric"], float(r["value"][1])) for name, rs in results.items() for r in rs
    ]
    count = int(float(pods[0]["value"][1]))
    return _status(samples, pods=count, via="prometheus", namespace=namespaces[0] or None)


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_status(status: dict) -> str:
    """A compact table per product, then Triton's queue time and the pods it is from."""
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
    where = {"metrics": "", "prometheus": " (summed by Prometheus)"}[status["via"]]
    where += f" in namespace {status['namespace']}" if status["namespace"] else ""
    lines.append(f"pods read: {status['pods']}{where}")
    return "\n".join(lines)
