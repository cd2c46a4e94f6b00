"""Line metrics against the real server: after a known set is scored, Triton's /metrics page
holds per-product counts equal to what was sent, histograms that sum to the scores returned,
and a drift statistic that stays below its alarm on good images and passes it when the same
product's good images come brighter. `dcam-client status` and `score --summary-json` agree.

The run is trained on its own data with 20 held-out good images per product, so its calibration
describes fresh good images well enough for a 256-image drift window (the session's tiny run
calibrates on 4).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image, ImageEnhance
from prometheus_client.parser import text_string_to_metric_families

from dcam.build.config import BuildConfig
from dcam.build.engines import build_repository
from dcam.client.cli import client_group
from dcam.core import drift
from dcam.core.manifest import Manifest
from dcam.datasets.synthetic import generate_dataset
from dcam.serve.server import ServerConfig, TritonServer
from tests.conftest import tiny_config

CATEGORIES = ("carpet", "nut")
GOOD = 300  # per product: more than the 256-image window
SHIFT = 1.15  # brightness factor of the drifted line


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("line")
    generate_dataset(
        root / "data", categories=list(CATEGORIES), n_train=40, n_test_good=GOOD,
        n_test_per_defect=3, size=64, seed=3,
    )  # fmt: skip
    from dcam.training.train import train

    train(tiny_config(root / "data", root / "run", min_val_per_category=20))
    return root


@pytest.fixture(scope="module")
def server(line: Path):
    repo = line / "repo"
    build_repository(BuildConfig(run_dir=str(line / "run"), out=str(repo), target="cpu"))
    with TritonServer(ServerConfig(repo)) as srv:
        yield srv


def metrics_url(srv: TritonServer) -> str:
    return f"http://127.0.0.1:{srv.ports['metrics']}/metrics"


def scrape(srv: TritonServer) -> str:
    with urllib.request.urlopen(metrics_url(srv), timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, str, float | None], float]:
    """(sample name, category, bucket edge) -> value, for our metrics."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "category" in s.labels:
                le = float(s.labels["le"]) if "le" in s.labels else None
                out[(s.name, s.labels["category"], le)] = s.value
    return out


def score(srv: TritonServer, folder: Path, out: Path, *options: str) -> list[dict]:
    args = ["score", "--dir", str(folder), "--url", srv.grpc_url, "--output", str(out)]
    result = CliRunner().invoke(client_group, [*args, "--force", *options])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def good_line(server: TritonServer, line: Path) -> dict:
    """The unshifted line: every product's test images (good and defects) under their product,
    then 7 images sent without one."""
    summary = line / "summary.json"
    rows = score(
        server, line / "data", line / "good.jsonl", "--recursive", "--glob", "*/test/*/*.png",
        "--category-from-path", "--summary-json", str(summary),
    )  # fmt: skip
    unlabelled = line / "unlabelled"
    unlabelled.mkdir()
    for path in sorted((line / "data" / "nut" / "test" / "good").glob("*.png"))[:7]:
        (unlabelled / path.name).write_bytes(path.read_bytes())
    unknown = score(server, unlabelled, line / "unknown.jsonl")
    return {
        "rows": rows,
        "unknown": unknown,
        "summary": json.loads(summary.read_text()),
        "metrics": samples(scrape(server)),  # before any test scores more
    }


def _by_product(rows: list[dict], label: str | None = None) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        assert row["error"] is None, row
        groups.setdefault(label or row["category"], []).append(row)
    return groups


def test_counts_and_histograms_equal_what_was_scored(server, good_line: dict) -> None:
    groups = {
        **_by_product(good_line["rows"]),
        **_by_product(good_line["unknown"], drift.UNKNOWN_CATEGORY),
    }
    assert set(groups) == {*CATEGORIES, drift.UNKNOWN_CATEGORY}
    values = good_line["metrics"]
    for product, rows in groups.items():
        scores = np.array([r["score"] for r in rows], np.float64)
        flagged = sum(bool(r["is_anomalous"]) for r in rows)
        # Warm-up (41 images per instance) is not counted: the counts are exactly ours.
        assert values[(drift.IMAGES, product, None)] == len(rows), product
        assert values[(drift.FLAGGED, product, None)] == flagged, product
        assert values[(f"{drift.SCORES}_count", product, None)] == len(rows)
        assert values[(f"{drift.SCORES}_sum", product, None)] == pytest.approx(scores.sum(), 1e-4)
        for edge in drift.SCORE_BUCKETS:
            bucket = values[(f"{drift.SCORES}_bucket", product, edge)]
            assert bucket == (scores <= edge).sum(), (product, edge)
    per_product = good_line["summary"]["per_product"]
    for product in CATEGORIES:
        assert per_product[product]["scored"] == values[(drift.IMAGES, product, None)]
        assert per_product[product]["flagged"] == values[(drift.FLAGGED, product, None)]


def test_drift_alarm_on_a_brighter_line_only(server, good_line: dict, line: Path) -> None:
    values = good_line["metrics"]
    for product in CATEGORIES:  # the unshifted line: a full window, below the alarm
        assert values[(drift.WINDOW, product, None)] == drift.DriftSpec.window
        assert values[(drift.PSI, product, None)] < drift.DriftSpec.alarm, product
        assert values[(drift.ALARM, product, None)] == 0
    shifted = line / "brighter" / "carpet"
    shifted.mkdir(parents=True)
    for path in sorted((line / "data" / "carpet" / "test" / "good").glob("*.png")):
        image = Image.open(path).convert("RGB")
        ImageEnhance.Brightness(image).enhance(SHIFT).save(shifted / path.name)
    score(server, shifted.parent, line / "brighter.jsonl", "--recursive", "--category-from-path")
    values = samples(scrape(server))
    assert values[(drift.PSI, "carpet", None)] >= drift.DriftSpec.alarm
    assert values[(drift.ALARM, "carpet", None)] == 1
    assert values[(drift.ALARM, "nut", None)] == 0  # the other product's line did not change
    status = CliRunner().invoke(client_group, ["status", "--metrics-url", metrics_url(server)])
    assert status.exit_code == 0, status.output
    lines = {line.split()[0]: line for line in status.output.splitlines()[1:]}
    assert lines["carpet"].endswith("DRIFT") and lines["nut"].endswith("ok")
    assert lines["carpet"].split()[1] == str(int(values[(drift.IMAGES, "carpet", None)]))


DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
# Metric names in PromQL: ours and Triton's; histogram series carry a suffix on the page.
METRIC_NAME = re.compile(r"\b(?:dcam|nv)_[a-z0-9_]+\b")


def dashboard_and_rule_queries() -> dict[str, str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    queries = {
        f"panel {p['title']!r}": t["expr"] for p in dashboard["panels"] for t in p["targets"]
    }
    rules = yaml.safe_load((DEPLOY / "prometheusrule.yaml").read_text())
    for group in rules["spec"]["groups"]:
        queries.update({f"alert {r['alert']}": r["expr"] for r in group["rules"]})
    return queries


SERIES = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ")
SELECTOR = re.compile(r"\b((?:dcam|nv)_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"')
# Labels Prometheus adds when it scrapes a pod (the PodMonitor's target labels): the dashboard
# and the rules select on them, the served page cannot carry them.
TARGET_LABELS = {"namespace", "pod", "job"}


def served_series(page: str) -> list[tuple[str, dict[str, str]]]:
    """(name, labels) of every series on a metrics page, names as written there."""
    series = []
    for line in page.splitlines():
        found = SERIES.match(line)
        if found and not line.startswith("#"):
            labels = dict((k, v) for k, _, v in MATCHER.findall(found.group(2) or ""))
            series.append((found.group(1), labels))
    return series


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    ops = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b}
    return all(
        re.fullmatch(value, labels.get(key, "")) if op == "=~" else ops[op](labels.get(key), value)
        for key, op, value in matchers
    )


def test_dashboard_and_alert_rules_use_names_the_server_serves(server, good_line) -> None:
    series = served_series(scrape(server))
    served = {name for name, _ in series}
    queries = dashboard_and_rule_queries()
    assert len(queries) >= 12
    for where, expr in queries.items():
        names = METRIC_NAME.findall(expr)
        assert names or 'up{job="dcam"}' in expr, where  # or Prometheus' health of our targets
        for name in names:
            assert name in served, f"{where} uses {name}, which the server does not serve"
        for name, selector in SELECTOR.findall(expr):  # label matchers select real series
            matchers = [m for m in MATCHER.findall(selector) if m[0] not in TARGET_LABELS]
            assert any(n == name and _matches(labels, matchers) for n, labels in series), (
                f"{where}: no served {name} matches {{{selector}}}"
            )
    # Each product's status a person can act on is there: rate, scores, drift, Triton's side.
    used = " ".join(queries.values())
    for name in (drift.FLAGGED, drift.IMAGES, f"{drift.SCORES}_bucket", drift.PSI, drift.ALARM):
        assert name in used
    assert "nv_inference_queue_duration_us" in used and "nv_inference_count" in used


def test_fused_layout_publishes_from_its_calibration_step(line: Path, tmp_path: Path) -> None:
    """Two instances of each model: the counts are Triton's sums over them, and each instance's
    drift window is its own series."""
    repo = tmp_path / "fused"
    build_repository(
        BuildConfig(
            run_dir=str(line / "run"), out=str(repo), target="cpu", layout="fused", instances=2
        )
    )
    with TritonServer(ServerConfig(repo)) as srv:
        rows = score(
            srv, line / "data" / "nut" / "test" / "good", tmp_path / "nut.jsonl",
            "--category", "nut",
        )  # fmt: skip
        page = scrape(srv)
    values = samples(page)
    assert values[(drift.IMAGES, "nut", None)] == len(rows) == GOOD
    flagged = sum(bool(r["is_anomalous"]) for r in rows)
    assert values[(drift.FLAGGED, "nut", None)] == flagged
    assert not any(key[1] == drift.UNKNOWN_CATEGORY for key in values)  # warm-up uncounted
    windows = {
        s.labels["model_instance"]: s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == drift.WINDOW
    }
    assert len(windows) == 2, windows  # calibrate_0_0 and calibrate_0_1 (or _1_0)
    calibration = Manifest.read(line / "run").scoring.calibration_for("nut")
    under = sum(r["score"] <= calibration.threshold for r in rows)
    if max(windows.values()) < drift.DriftSpec.window:
        assert sum(windows.values()) == under
