"""deploy/monitoring's alert rules through Prometheus' own tools: `promtool check rules` parses
every expression the way Prometheus does, and `promtool test rules` (tests/promtool/) feeds
synthetic series and checks which alerts fire, with which labels and texts: a drifting product
for 10 minutes fires and a flapping one does not; 10% flagged fires, 1% or 30 parts do not;
2 s queue time fires, 100 ms or the ensemble's own figure does not; 5% failing requests fire,
one bad request does not. Skips without promtool (Debian's `prometheus` package has it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "monitoring" / "prometheusrule.yaml"
TESTS = ROOT / "tests" / "promtool" / "dcam-line.test.yaml"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """The PrometheusRule's spec is a plain Prometheus rules file."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is needed to check the alert rules")
    spec = yaml.safe_load(RULES.read_text())["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    return tmp_path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)


def test_rules_parse(rules: Path) -> None:
    result = promtool("check", "rules", "rules.yaml", cwd=rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_rules_fire_on_the_lines_they_should_only(rules: Path) -> None:
    result = promtool("test", "rules", TESTS.name, cwd=rules)
    assert result.returncode == 0, result.stdout + result.stderr
    every = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["spec"]["groups"] for r in g["rules"]
    }
    tested = {
        case["alertname"]
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == every  # no rule goes untested


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query through Prometheus' parser: each becomes a recording rule (with
    Grafana's $__rate_interval as 5m) that `promtool check rules` must accept."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is needed to parse the queries")
    dashboard = json.loads((ROOT / "deploy" / "monitoring" / "grafana-dashboard.json").read_text())
    records = [
        {
            "record": f"dcam:panel_{p['id']}_{t['refId']}",
            "expr": t["expr"].replace("$__rate_interval", "5m"),
        }
        for p in dashboard["panels"]
        for t in p["targets"]
    ]
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": records}]})
    )
    result = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout
