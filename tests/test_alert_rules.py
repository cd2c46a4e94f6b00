"""deploy/monitoring's alert rules through Prometheus' own tools: `promtool check rules` parses
every expression the way Prometheus does, and `promtool test rules` (tests/promtool/) feeds
synthetic series and checks which alerts fire, with which labels and texts: a drifting product
for 10 minutes fires and a flapping one does not; 10% flagged fires, 1% or 30 parts do not;
2 s queue time fires, 100 ms or the ensemble's own figure does not; 5% failing requests fire,
one bad request does not; no dcam target, a target that cannot be scraped, or requests without
line metrics fire. Skips without promtool (Debian's `prometheus` package has it). And the folder
is a Kustomize component that takes the namespace of the overlay that lists it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.tools import promtool, require

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "monitoring" / "prometheusrule.yaml"
TESTS = ROOT / "tests" / "promtool" / "dcam-line.test.yaml"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """The PrometheusRule's spec is a plain Prometheus rules file."""
    require("promtool", "Debian's package prometheus (.ci/system-deps.sh installs it)")
    spec = yaml.safe_load(RULES.read_text())["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    return tmp_path


def test_rules_parse(rules: Path) -> None:
    result = promtool("check", "rules", "rules.yaml", cwd=rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


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


DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"


def test_dashboard_shows_one_namespace() -> None:
    """A `namespace` variable from the pods' series, and every panel's series selected by it:
    two lines in one Prometheus are not summed into one."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["namespace"]["query"]["query"].endswith(", namespace)")
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            selectors = re.findall(r"\b(?:dcam|nv)_\w+(\{[^}]*\})?", target["expr"])
            assert selectors, target["expr"]
            assert all(s.startswith('{namespace="$namespace"') for s in selectors), target["expr"]


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query through Prometheus' parser: each becomes a recording rule (with
    Grafana's $__rate_interval as 5m) that `promtool check rules` must accept."""
    require("promtool", "Debian's package prometheus (.ci/system-deps.sh installs it)")
    dashboard = json.loads(DASHBOARD.read_text())
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


def test_monitoring_is_a_component_that_takes_the_overlays_namespace(tmp_path: Path) -> None:
    """An overlay elsewhere lists deploy/monitoring under `components:`: every object lands in
    its namespace, and the Prometheus Operator objects carry kube-prometheus-stack's label."""
    require("kubectl", "kubectl with its built-in kustomize (.ci/system-deps.sh installs it)")
    component = os.path.relpath(RULES.parent, tmp_path)
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "line-7",
        "components": [component],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    objects = {o["kind"]: o for o in yaml.safe_load_all(out.stdout) if o}
    assert set(objects) == {"ConfigMap", "PodMonitor", "PrometheusRule"}
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"line-7"}
    for kind in ("PodMonitor", "PrometheusRule"):
        assert objects[kind]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert objects["PodMonitor"]["spec"]["jobLabel"] == "app.kubernetes.io/name"  # job="dcam"


def _annotations(node: object) -> list[str]:
    """Every annotation key anywhere in a manifest (objects and their pod templates)."""
    if isinstance(node, list):
        return [key for item in node for key in _annotations(item)]
    if not isinstance(node, dict):
        return []
    found = list(node.get("metadata", {}).get("annotations", {}) or {})
    return found + [key for value in node.values() for key in _annotations(value)]


def test_the_podmonitor_is_the_only_scrape_path() -> None:
    """A pod annotated prometheus.io/scrape is scraped again by annotation-based discovery,
    beside the PodMonitor: every sum over pods would count it twice."""
    manifests = sorted((ROOT / "deploy").rglob("*.yaml"))
    assert any(path.name == "deployment.yaml" for path in manifests)
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            keys = _annotations(doc)
            assert not [k for k in keys if k.startswith("prometheus.io/")], path
