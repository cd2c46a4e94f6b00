"""deploy/components/autoscaling-{hpa,keda}: each Component renders on deploy/base through a
throwaway overlay (as `dcam-build deploy` writes one), takes the overlay's namespace, and scales
the Deployment on the queue time a request of the ensemble spends in every step of the pipeline.
The PromQL goes through Prometheus' own tools: `promtool check rules` parses it, and
`promtool test rules` evaluates it on synthetic Triton series (both layouts, two namespaces).
Under CI=true a missing kubectl or promtool fails; elsewhere those tests skip."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from dcam.build.config import QUEUE_TIMEOUT_MS
from dcam.core.names import CALIBRATE_MODEL, ENSEMBLE_MODEL, ENTRY_MODELS, POSTPROCESS_MODEL
from tests.tools import promtool, require

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
HPA = DEPLOY / "components" / "autoscaling-hpa"
KEDA = DEPLOY / "components" / "autoscaling-keda"
ADAPTER_VALUES = HPA / "prometheus-adapter-values.yaml"
KUBERNETES = "1.32.0"  # as tests/test_deploy.py
# Every step a request of the ensemble queues in: the models requests enter, then the Python
# step after them (postprocess in the ensemble layout, calibrate in the fused one).
STEPS = {*ENTRY_MODELS, POSTPROCESS_MODEL, CALIBRATE_MODEL}
# The placeholder `dcam-build deploy` replaces with the overlay's namespace in the KEDA query.
NAMESPACE_TOKEN = 'namespace="dcam"'
OVERLAY_NAMESPACE = "line-3"


def render(tmp_path: Path, component: Path, **extra: object) -> dict[str, dict]:
    """deploy/base plus one component, through an overlay in tmp_path; objects by kind.

    Kustomize refuses absolute resource paths, so the overlay names them relative to itself.
    """
    require("kubectl", "kubectl (with its built-in kustomize) renders deploy/")
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": OVERLAY_NAMESPACE,
        "resources": [os.path.relpath(DEPLOY / "base", tmp_path)],
        "components": [os.path.relpath(component, tmp_path)],
        **extra,
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {o["kind"]: o for o in yaml.safe_load_all(out.stdout) if o}


def component(folder: Path) -> dict:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert (spec["apiVersion"], spec["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    return spec


def adapter_rule() -> dict:
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return rule


def keda_query() -> str:
    (trigger,) = yaml.safe_load((KEDA / "scaledobject.yaml").read_text())["spec"]["triggers"]
    return trigger["metadata"]["query"]


def assert_names_every_step(query: str) -> None:
    """Queue time of every step (and of nothing else) over the ensemble's successful requests."""
    (steps,) = re.findall(r'nv_inference_queue_duration_us\{[^}]*model=~"([^"]+)"', query)
    assert set(steps.split("|")) == STEPS
    (requests,) = re.findall(r'nv_inference_request_success\{[^}]*model="([^"]+)"', query)
    assert requests == ENSEMBLE_MODEL


def test_hpa_component_scales_the_deployment_before_the_queue_rejects(tmp_path: Path) -> None:
    assert component(HPA)["resources"] == ["hpa.yaml"]  # the adapter values are not an object
    objects = render(tmp_path, HPA)
    hpa, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    kubernetes_validate.validate(hpa, KUBERNETES, strict=True)
    assert hpa["metadata"]["namespace"] == OVERLAY_NAMESPACE == deployment["metadata"]["namespace"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    assert int(metric["pods"]["target"]["averageValue"]) < QUEUE_TIMEOUT_MS * 1000
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_adapter_values_serve_the_metric_the_hpa_asks_for() -> None:
    """Helm values for prometheus-adapter's `rules.custom`, naming the HPA's metric."""
    hpa = yaml.safe_load((HPA / "hpa.yaml").read_text())
    (metric,) = hpa["spec"]["metrics"]
    rule = adapter_rule()
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert re.fullmatch(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    query = rule["metricsQuery"]
    assert query.count("<<.LabelMatchers>>") == 2 and query.count("<<.GroupBy>>") == 2
    assert_names_every_step(query)


def test_keda_component_holds_a_latency_as_a_value_in_its_namespace(tmp_path: Path) -> None:
    assert component(KEDA)["resources"] == ["scaledobject.yaml"]
    objects = render(tmp_path, KEDA)
    scaled, deployment = objects["ScaledObject"], objects["Deployment"]
    assert scaled["metadata"]["namespace"] == OVERLAY_NAMESPACE
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "cooldownPeriod" not in scaled["spec"]  # KEDA: it applies only when scaling to 0
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    assert_names_every_step(trigger["metadata"]["query"])
    assert trigger["metadata"]["query"].count(NAMESPACE_TOKEN) == 2  # both selectors filtered
    # The same policy as the HPA component: bounds, target and scale-down.
    hpa = yaml.safe_load((HPA / "hpa.yaml").read_text())["spec"]
    (metric,) = hpa["metrics"]
    assert int(trigger["metadata"]["threshold"]) == int(metric["pods"]["target"]["averageValue"])
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == hpa["behavior"]


def test_an_overlay_can_replace_the_namespace_token(tmp_path: Path) -> None:
    """What `dcam-build deploy` does: a JSON patch with the query, token replaced."""
    query = keda_query().replace(NAMESPACE_TOKEN, f'namespace="{OVERLAY_NAMESPACE}"')
    patch = [{"op": "replace", "path": "/spec/triggers/0/metadata/query", "value": query}]
    target = {"group": "keda.sh", "kind": "ScaledObject", "name": "dcam-triton"}
    objects = render(tmp_path, KEDA, patches=[{"target": target, "patch": yaml.safe_dump(patch)}])
    rendered = objects["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    assert NAMESPACE_TOKEN not in rendered
    assert rendered.count(f'namespace="{OVERLAY_NAMESPACE}"') == 2


# --- The PromQL, through promtool -----------------------------------------------------------

# The adapter fills its templates per HPA request: the HPA's namespace and pods, grouped by pod.
ADAPTER_MATCHERS = 'namespace="dcam",pod=~"p1|p2|p3"'
RECORDED = {
    "dcam:keda_queue_time_us_per_request": keda_query,
    "dcam:adapter_queue_time_us_per_request": lambda: (
        adapter_rule()["metricsQuery"]
        .replace("<<.LabelMatchers>>", ADAPTER_MATCHERS)
        .replace("<<.GroupBy>>", "namespace, pod")
    ),
}


QUEUE, REQUESTS = "nv_inference_queue_duration_us", "nv_inference_request_success"
KEDA_RECORD, ADAPTER_RECORD = RECORDED


def counter(name: str, model: str, pod: str, per_15s: float, namespace: str = "dcam") -> dict:
    labels = f'namespace="{namespace}",pod="{pod}",model="{model}",version="1"'
    return {"series": f"{name}{{{labels}}}", "values": f"0+{per_15s:.0f}x40"}


def synthetic_series() -> list[dict]:
    """Three pods of namespace dcam at 10 requests/s each (150 per 15 s scrape).

    p1, ensemble layout: teacher 80 ms + student 80 ms + postprocess 40 ms = 200 ms a request.
    p2, ensemble layout: teacher 300 ms + student 300 ms + postprocess 0 = 600 ms.
    p3, fused layout: fused 300 ms + calibrate 100 ms = 400 ms.
    Queue counters grow by (ms * 1000 µs) * 150 requests per scrape. Noise the queries must
    ignore: the ensemble's own queue series, and a pod of another namespace queueing 10 s.
    """
    waits = {
        "p1": {"teacher": 80, "student": 80, "postprocess": 40},
        "p2": {"teacher": 300, "student": 300, "postprocess": 0},
        "p3": {"fused": 300, "calibrate": 100},
    }
    series = []
    for pod, steps in waits.items():
        series.append(counter(REQUESTS, ENSEMBLE_MODEL, pod, 150))
        series += [counter(QUEUE, model, pod, ms * 1000 * 150) for model, ms in steps.items()]
    series.append(counter(QUEUE, ENSEMBLE_MODEL, "p1", 900_000_000))
    series.append(counter(REQUESTS, ENSEMBLE_MODEL, "q1", 15, namespace="other"))
    series.append(counter(QUEUE, "teacher", "q1", 10_000_000 * 15, namespace="other"))
    return series


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """Each query as a recording rule, in a plain Prometheus rules file."""
    require("promtool", "promtool (Debian package prometheus) parses and evaluates the PromQL")
    recorded = [{"record": name, "expr": query()} for name, query in RECORDED.items()]
    group = {"name": "dcam-autoscaling", "rules": recorded}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [group]}))
    return tmp_path


def test_queries_parse(rules: Path) -> None:
    result = promtool("check", "rules", "rules.yaml", cwd=rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RECORDED)} rules found" in result.stdout


def test_queries_measure_the_queue_time_of_a_request_end_to_end(rules: Path) -> None:
    """Per pod for the adapter (the HPA averages them), over the namespace for KEDA: both 400 ms
    here, whatever the layout, and never the ensemble's own figure or another namespace."""
    per_pod = [
        {"labels": f'{ADAPTER_RECORD}{{namespace="dcam",pod="{pod}"}}', "value": value}
        for pod, value in (("p1", 200_000), ("p2", 600_000), ("p3", 400_000))
    ]
    over_namespace = [{"labels": KEDA_RECORD, "value": 400_000}]
    case = {
        "interval": "15s",
        "input_series": synthetic_series(),
        "promql_expr_test": [
            {"expr": ADAPTER_RECORD, "eval_time": "5m", "exp_samples": per_pod},
            {"expr": KEDA_RECORD, "eval_time": "5m", "exp_samples": over_namespace},
        ],
    }
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "15s", "tests": [case]}
    (rules / "autoscaling.test.yaml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "autoscaling.test.yaml", cwd=rules)
    assert result.returncode == 0, result.stdout + result.stderr
