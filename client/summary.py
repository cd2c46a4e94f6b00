"""What a run of `dcam-client score` saw: counts, latencies and per-product rates, for the
closing summary and `--summary-json`."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from dcam.client.results import Result
from dcam.core.drift import UNKNOWN_CATEGORY
from dcam.core.files import write_json_atomic


class Tally:
    """Counts and latencies for the closing summary, overall and per product."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.files = self.anomalous = 0
        self.failures: list[Result] = []
        self.latencies: list[float] = []
        self.scored: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def add(self, result: Result) -> None:
        self.files += 1
        product = result.category or UNKNOWN_CATEGORY  # the label the server's metrics use
        if not result.ok:
            self.failures.append(result)
            self.failed[product] += 1
            return
        self.anomalous += bool(result.is_anomalous)
        self.scored[product] += 1
        self.flagged[product] += bool(result.is_anomalous)
        self.latencies.append(result.latency_ms)

    def per_product(self) -> dict[str, dict]:
        """Per product: images scored, flagged and failed, and the anomaly rate (flagged over
        scored; None with nothing scored)."""
        products = sorted(set(self.scored) | set(self.failed))
        return {
            p: {
                "scored": self.scored[p],
                "flagged": self.flagged[p],
                "failed": self.failed[p],
                "anomaly_rate": self.flagged[p] / self.scored[p] if self.scored[p] else None,
            }
            for p in products
        }

    def seconds(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def summary(self) -> str:
        lat = np.percentile(self.latencies, [50, 95, 99]) if self.latencies else [0, 0, 0]
        lines = [
            f"files {self.files}, anomalous {self.anomalous}, failures "
            f"{len(self.failures)}, {self.files / self.seconds():.1f} images/s, "
            f"request latency p50/p95/p99 {lat[0]:.0f}/{lat[1]:.0f}/{lat[2]:.0f} ms"
        ]
        for product, row in self.per_product().items():
            rate = "-" if row["anomaly_rate"] is None else f"{100 * row['anomaly_rate']:.1f}%"
            lines.append(
                f"  {product}: {row['scored']} scored, {row['flagged']} anomalous ({rate})"
                + (f", {row['failed']} failed" if row["failed"] else "")
            )
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        lat = np.percentile(self.latencies, [50, 95, 99]).tolist() if self.latencies else None
        write_json_atomic(
            path,
            {
                "files": self.files,
                "anomalous": self.anomalous,
                "failures": len(self.failures),
                "images_per_s": self.files / self.seconds(),
                "latency_ms_p50_p95_p99": lat,
                "per_product": self.per_product(),
            },
        )
