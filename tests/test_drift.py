"""The drift rule (core/drift.py) and the pieces of line status that need no server: the
reference law, the PSI, the window, the histogram quantile the status prints, the warm-up count
the judging models skip, and the client's per-product tally."""

from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from dcam.build.config import BuildConfig
from dcam.client.results import Result
from dcam.client.status import format_status, histogram_quantile, line_status
from dcam.client.summary import Tally
from dcam.core import calibration as law
from dcam.core import drift
from dcam.core.calibration import Calibration, gumbel_z_threshold
from dcam.core.errors import ConfigError
from dcam.serve.compat import read_configs

THRESHOLD = gumbel_z_threshold(0.01)
CALIBRATION = Calibration(0.0, 1.0, THRESHOLD)  # the law drift reads is the calibration's


def reference_sample(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard-Gumbel z-scores below the threshold: a line exactly like its calibration."""
    values = rng.gumbel(law.GUMBEL_MU, law.GUMBEL_BETA, 2 * n)
    return values[values < THRESHOLD][:n]


def test_reference_is_the_law_the_calibration_thresholds_with() -> None:
    assert law.gumbel_z_quantile(0.99) == pytest.approx(3.137, abs=1e-3) == THRESHOLD
    values = reference_sample(np.random.default_rng(0), 200_000)
    assert values.mean() == pytest.approx(-0.02, abs=0.02)  # mean 0, less the cut-off tail
    edges = CALIBRATION.law_edges(10)
    shares = np.bincount(np.searchsorted(edges, values, side="right"), minlength=10) / len(values)
    np.testing.assert_allclose(shares, 0.1, atol=0.003)


def test_psi_is_small_on_an_unchanged_line_and_large_on_a_moved_one() -> None:
    rng = np.random.default_rng(1)
    edges = CALIBRATION.law_edges(10)
    stable = [drift.psi(reference_sample(rng, 256), edges) for _ in range(300)]
    # N * PSI ~ chi-square(9): mean 9 / 256 = 0.035; far below the default alarm.
    assert np.mean(stable) == pytest.approx(0.035, abs=0.01)
    assert max(stable) < drift.DriftSpec.alarm / 2
    moved = reference_sample(rng, 256) + 1.0  # normal parts score a calibration std higher
    assert drift.psi(moved[moved < THRESHOLD], edges) > drift.DriftSpec.alarm


def test_window_keeps_the_last_images_and_reports_once_full() -> None:
    spec = drift.DriftSpec(window=40, bins=4, alarm=0.5)
    window = drift.DriftWindow(spec, CALIBRATION)
    window.add(np.zeros(39))
    assert window.filled == 39 and window.statistic() == 0.0 and not window.alarm()
    window.add(np.array([1.0]))
    assert window.filled == 40 and window.statistic() > 0
    window.add(np.full(100, 2.0))  # more than a window at once: only the last 40 stay
    assert window.count == 140 and window.mean() == 2.0 and window.alarm()
    window.add(np.arange(30.0))  # wraps around the ring: 10 of the 2.0s and the 30 new ones
    assert window.count == 170
    assert sorted(window.values) == sorted([2.0] * 10 + list(np.arange(30.0)))


def test_drift_settings_are_checked_and_travel_as_json() -> None:
    spec = drift.DriftSpec(window=128, bins=8, alarm=0.3)
    assert drift.DriftSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match="alarm > 0"):
        drift.DriftSpec(alarm=0.0)
    with pytest.raises(ConfigError, match="window >= 2 \\* bins"):
        BuildConfig(run_dir="r", out="o", drift_window=10, drift_bins=10)
    assert BuildConfig(run_dir="r", out="o", line_metrics=False).drift_spec() is None


def test_warm_up_count_matches_what_the_build_configures(ensemble_repo) -> None:
    config = MessageToDict(
        read_configs(ensemble_repo)["postprocess"], preserving_proto_field_name=True
    )  # the JSON Triton hands the Python model
    batches = [int(s["batch_size"]) for s in config["model_warmup"]]
    assert drift.warm_up_images(config) == sum(batches) > 0
    params = config["parameters"]
    assert json.loads(params[drift.DRIFT_PARAMETER]["string_value"]) == json.loads(
        drift.DriftSpec().to_json()
    )


def test_histogram_quantile_interpolates_like_promql() -> None:
    values = np.random.default_rng(2).normal(0, 1, 10_000)
    edges = [float(e) for e in np.linspace(-4, 4, 81)] + [float("inf")]
    buckets = {e: float((values <= e).sum()) for e in edges}
    for q in (0.1, 0.5, 0.9):
        assert histogram_quantile(buckets, q) == pytest.approx(np.quantile(values, q), abs=0.02)
    assert histogram_quantile({float("inf"): 0.0}, 0.5) is None


def test_tally_rates_per_product() -> None:
    tally = Tally()
    for category, flagged in [("nut", True), ("nut", False), (None, False), ("carpet", False)]:
        tally.add(Result("p", category=category, score=0.0, is_anomalous=flagged, latency_ms=1))
    tally.add(Result("q", category="nut", error="undecodable"))
    products = tally.per_product()
    assert products["nut"] == {"scored": 2, "flagged": 1, "failed": 1, "anomaly_rate": 0.5}
    assert products[drift.UNKNOWN_CATEGORY]["scored"] == 1
    assert "nut: 2 scored, 1 anomalous (50.0%), 1 failed" in tally.summary()


def test_status_takes_the_worst_instance_and_sums_the_counts() -> None:
    """The exposition Triton writes for two instances of a judging model (shape as served)."""
    page = "\n".join(
        [
            "# TYPE dcam_images_total counter",
            'dcam_images_total{category="nut"} 300',
            "# TYPE dcam_images_flagged_total counter",
            'dcam_images_flagged_total{category="nut"} 6',
            "# TYPE dcam_drift_psi gauge",
            'dcam_drift_psi{category="nut",model_instance="calibrate_0_0"} 0.2',
            'dcam_drift_psi{category="nut",model_instance="calibrate_0_1"} 0.7',
            "# TYPE dcam_drift_alarm gauge",
            'dcam_drift_alarm{category="nut",model_instance="calibrate_0_0"} 0',
            'dcam_drift_alarm{category="nut",model_instance="calibrate_0_1"} 1',
            "# TYPE dcam_normal_score_mean gauge",
            'dcam_normal_score_mean{category="nut",model_instance="calibrate_0_0"} 0.5',
            'dcam_normal_score_mean{category="nut",model_instance="calibrate_0_1"} 1.5',
            "# TYPE nv_inference_queue_duration_us counter",
            'nv_inference_queue_duration_us{model="fused",version="1"} 30000',
            'nv_inference_queue_duration_us{model="dcam",version="1"} 999999',
            "# TYPE nv_inference_request_success counter",
            'nv_inference_request_success{model="fused",version="1"} 10',
            "",
        ]
    )
    status = line_status(page)
    nut = status["products"]["nut"]
    assert (nut["images"], nut["flagged"], nut["anomaly_rate"]) == (300, 6, 0.02)
    assert nut["drift_psi"] == 0.7 and nut["drift_alarm"] and nut["normal_score_mean"] == 1.0
    assert status["queue_ms_per_request"] == 3.0  # the ensemble's own figure left out
    assert "DRIFT" in format_status(status).splitlines()[1]
