"""deploy/'s custom resources against their CRDs' schemas, offline, as a cluster would admit them.

Reads every kustomization under deploy/ that renders alone (`kubectl kustomize`; Components render
through the overlays that use them) and every YAML document under deploy/ that is not a patch.
tests/crd_validate.mjs checks the KEDA, Prometheus Operator, Gateway API and cert-manager objects
with the validators .ci/crd-schemas.sh installs (releases pinned there). No package carries
KServe's CRD, so the InferenceService fields we rely on are checked here against KServe's
documentation. Core kinds are tests/test_deploy.py's (kubernetes-validate). Under CI=true a
missing kubectl, node or validator install fails; elsewhere those tests skip and say the fix.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.kserve_rules import kserve_problems
from tests.test_deploy import KUBERNETES
from tests.tools import require_that

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VALIDATOR = ROOT / "tests" / "crd_validate.mjs"
SETUP = ".ci/crd-schemas.sh"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")
# What deploy/ must carry somewhere, so that a discovery that finds nothing cannot pass.
EXPECTED = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ISVC,
}


# --- Discovery: which folders render, which files hold objects --------------------------------


def _kustomization_file(folder: Path) -> Path | None:
    return next((folder / n for n in KUSTOMIZATION_FILES if (folder / n).is_file()), None)


def _kustomization_files() -> list[Path]:
    return sorted(p for n in KUSTOMIZATION_FILES for p in DEPLOY.rglob(n))


def renderable_folders() -> list[Path]:
    """Folders with a kustomization that is not a Component (those cannot render alone)."""
    folders = []
    for path in _kustomization_files():
        if (yaml.safe_load(path.read_text()) or {}).get("kind") != "Component":
            folders.append(path.parent)
    return folders


def _patch_files() -> set[Path]:
    """Files any kustomization or component names as a patch: partial objects, not resources."""
    patches = set()
    for path in _kustomization_files():
        spec = yaml.safe_load(path.read_text()) or {}
        entries = spec.get("patches", []) + spec.get("patchesJson6902", [])
        names = [e["path"] for e in entries if isinstance(e, dict) and "path" in e]
        names += [e for e in spec.get("patchesStrategicMerge", []) if isinstance(e, str)]
        patches.update((path.parent / name).resolve() for name in names)
    return patches


def manifest_files() -> list[Path]:
    skip = _patch_files()
    files = sorted(p for ext in ("*.yaml", "*.yml") for p in DEPLOY.rglob(ext))
    return [p for p in files if p.name not in KUSTOMIZATION_FILES and p.resolve() not in skip]


SOURCES = [f"kustomize:{p.relative_to(DEPLOY)}" for p in renderable_folders()] + [
    f"file:{p.relative_to(DEPLOY)}" for p in manifest_files()
]


def load(source: str) -> list[dict] | str:
    """The source's objects, or why they could not be read (that source's test reports it)."""
    how, name = source.split(":", 1)
    if how == "kustomize":
        out = subprocess.run(
            ["kubectl", "kustomize", str(DEPLOY / name)], capture_output=True, text=True
        )
        if out.returncode != 0:
            return f"kubectl kustomize failed: {out.stderr}"
        text = out.stdout
    else:
        text = (DEPLOY / name).read_text()
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        return f"not YAML: {error}"
    return [d for d in docs if isinstance(d, dict) and "apiVersion" in d and "kind" in d]


# --- The validator ----------------------------------------------------------------------------


def validate(objects: list[dict]) -> tuple[int, list[dict]]:
    """Run tests/crd_validate.mjs on objects; its exit code and one result per object."""
    require_that(
        shutil.which("node") is not None, "node is needed for the CRD schemas (Node.js 22)"
    )
    out = subprocess.run(
        ["node", str(VALIDATOR)], input=json.dumps(objects), capture_output=True, text=True
    )
    require_that(out.returncode != 3, out.stderr.strip())
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines()]


def is_core(obj: dict) -> bool:
    """A kind the Kubernetes schemas know (tests/test_deploy.py validates those)."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError:
        pass
    return True


@pytest.fixture(scope="module")
def checked() -> dict[str, list[tuple[dict, dict]] | str]:
    """Every source's objects, each with its validator result (one validator run for all)."""
    require_that(shutil.which("kubectl") is not None, "kubectl (with kustomize) renders deploy/")
    loaded = {source: load(source) for source in SOURCES}
    readable = {source: objs for source, objs in loaded.items() if not isinstance(objs, str)}
    _, results = validate([o for objects in readable.values() for o in objects])
    pairs: dict[str, list[tuple[dict, dict]] | str] = dict(loaded)
    start = 0
    for source, objects in readable.items():
        pairs[source] = list(zip(objects, results[start : start + len(objects)], strict=True))
        start += len(objects)
    return pairs


@pytest.mark.parametrize("source", SOURCES)
def test_every_custom_resource_matches_its_crd_schema(checked: dict, source: str) -> None:
    assert not isinstance(checked[source], str), f"{source}: {checked[source]}"
    for obj, result in checked[source]:
        where = f"{source}: {obj['kind']}/{obj.get('metadata', {}).get('name')}"
        assert result["status"] != "invalid", f"{where}: {result['errors']}"
        if result["status"] == "unchecked" and (obj["apiVersion"], obj["kind"]) == ISVC:
            assert not kserve_problems(obj), f"{where}: {kserve_problems(obj)}"
        elif result["status"] == "unchecked":
            assert is_core(obj), f"{where}: no schema checks {obj['apiVersion']} (add a package)"


def _pairs(checked: dict) -> list[tuple[dict, dict]]:
    return [pair for pairs in checked.values() if not isinstance(pairs, str) for pair in pairs]


def test_deploy_carries_the_custom_resources_we_rely_on(checked: dict) -> None:
    found = {(o["apiVersion"], o["kind"]) for o, _ in _pairs(checked)}
    assert found >= EXPECTED, EXPECTED - found
    statuses = {r["kind"]: r["status"] for _, r in _pairs(checked)}
    assert {k: statuses[k] for _, k in EXPECTED - {ISVC}} == dict.fromkeys(
        ["ScaledObject", "PodMonitor", "PrometheusRule"], "valid"
    )


def _find(checked: dict, kind: str) -> dict:
    return copy.deepcopy(next(o for o, _ in _pairs(checked) if o["kind"] == kind))


def test_validator_rejects_wrong_field_types(checked: dict) -> None:
    """Proof the validators really check: deploy/'s own objects, each with one field broken."""
    scaled = _find(checked, "ScaledObject")
    scaled["spec"]["minReplicaCount"] = "two"
    monitor = _find(checked, "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    rule = _find(checked, "PrometheusRule")
    del rule["spec"]["groups"][0]["name"]
    core = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "spec": 1}
    code, results = validate([scaled, monitor, rule, core])
    assert code == 1
    assert [r["status"] for r in results] == ["invalid", "invalid", "invalid", "unchecked"]
    assert [e["path"] for e in results[0]["errors"]] == ["/spec/minReplicaCount"]
    assert [e["path"] for e in results[1]["errors"]] == ["/spec/podMetricsEndpoints/0/interval"]
    assert results[2]["errors"][0]["params"] == {"missingProperty": "name"}


def test_validator_rejects_fields_the_schema_does_not_declare(checked: dict) -> None:
    """A misspelt field passes a schema without additionalProperties: false, yet a cluster
    refuses it (strict field validation); maps such as labels and trigger metadata stay open."""
    scaled = _find(checked, "ScaledObject")
    scaled["spec"]["cooldownPerod"] = scaled["spec"].pop("cooldownPeriod", 300)
    scaled["spec"]["triggers"][0]["metadata"]["anyKey"] = "maps take any key"
    scaled["metadata"].setdefault("labels", {})["release"] = "kube-prometheus-stack"
    code, results = validate([scaled])
    assert code == 1
    assert [e["path"] for e in results[0]["errors"]] == ["/spec/cooldownPerod"]


def test_validator_checks_gateway_routes() -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "dcam"},
        "spec": {
            "parentRefs": [{"name": "line"}],
            "hostnames": ["dcam.plant.example"],
            "rules": [{"backendRefs": [{"name": "dcam-triton", "port": 8001}]}],
        },
    }
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["backendRefs"][0]["port"] = "grpc"
    code, results = validate([route, broken])
    assert code == 1
    assert [r["status"] for r in results] == ["valid", "invalid"]


def _isvc() -> dict:
    return yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())


def test_kserve_inference_service_keeps_the_documented_rules() -> None:
    assert kserve_problems(_isvc()) == []


def _set(path: str, value: object) -> dict:
    isvc = _isvc()
    *parents, leaf = path.split(".")
    node = isvc
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return isvc


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("metadata.name", "Dcam_Line", "IsvcNameFmt"),
        ("spec.predictor.triton", {"storageUri": "s3://b/m"}, "exactly the `model`"),
        ("spec.predictor.model.modelFormat.name", "onnx", "modelFormat.name"),
        ("spec.predictor.model.runtimeVersion", 26.07, "runtimeVersion"),
        ("spec.predictor.model.storageUri", "ftp://host/repo", "storageUri scheme"),
        ("spec.predictor.minReplicas", -1, "minReplicas"),
        ("spec.predictor.maxReplicas", 0, "maxReplicas"),
        ("spec.predictor.model.ports", [{"name": "grpc", "containerPort": 9000}], "h2c"),
        ("spec.predictor.model.ports", [{"name": "h2c"}, {"name": "http1"}], "one port"),
        ("spec.predictor.model.resources", {"limits": {"cpu": [2]}}, "core Pod"),
        ("spec.predictor.model.volumeMount", [{"name": "shm"}], "core Pod"),
        ("spec.predictor.volumes", [{"name": "shm", "emptyDir": {"medium": 1}}], "core Pod"),
    ],
)
def test_kserve_rules_catch_what_kserve_refuses(path: str, value: object, expected: str) -> None:
    problems = kserve_problems(_set(path, value))
    assert any(expected in p for p in problems), problems
