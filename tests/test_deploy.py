"""deploy/: every kustomization renders with `kubectl kustomize` (offline), every object of a
built-in kind validates against the Kubernetes OpenAPI schemas that `kubernetes-validate`
bundles, and the objects agree with each other and with what the build and client use. No
cluster runs here; the custom resources (KEDA, KServe, Prometheus Operator) are checked for
the fields we set and their links, not against their CRD schemas (those are not bundled)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from dcam.build.plans import SCRIPT
from dcam.build.releases import DEFAULT_RELEASE, release
from tests.tools import require

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBERNETES = "1.32.0"  # the kubectl this machine kind has; Triton's docs target current clusters
CUSTOM = {
    "keda.sh/v1alpha1",
    "serving.kserve.io/v1beta1",
    "monitoring.coreos.com/v1",
    "gateway.networking.k8s.io/v1",
}


def _kind(folder: Path) -> str:
    return yaml.safe_load((folder / "kustomization.yaml").read_text()).get("kind", "Kustomization")


def components() -> list[str]:
    """Every Kustomize Component under deploy/: they render only inside a kustomization."""
    found = [p.parent for p in DEPLOY.rglob("kustomization.yaml") if _kind(p.parent) == "Component"]
    return sorted(str(f.relative_to(DEPLOY)) for f in found)


KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu", *components()]


def render(folder: str) -> list[dict]:
    """`kubectl kustomize` of a folder of deploy/ (or any path); a Component on top of base."""
    require("kubectl", "kubectl with its built-in kustomize (.ci/system-deps.sh installs it)")
    path = DEPLOY / folder
    with tempfile.TemporaryDirectory() as tmp:
        if _kind(path) == "Component":
            rel = [os.path.relpath(f, tmp) for f in (DEPLOY / "base", path)]  # kustomize: relative
            wrapper = {"resources": [rel[0]], "components": [rel[1]]}
            (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(wrapper))
            path = Path(tmp)
        out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects}


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_renders_and_validates(folder: str) -> None:
    objects = render(folder)
    assert objects
    for obj in objects:
        if obj["apiVersion"] in CUSTOM:
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_base_rolls_out_without_dropping_below_ready_and_probes_triton() -> None:
    objects = by_kind(render("base"))
    deployment = objects["Deployment"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    container = _container(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    args = container["args"]
    assert "--model-control-mode=none" in args and "--strict-readiness=true" in args
    # The Services and the PodDisruptionBudget select exactly the Deployment's pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = objects[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    headless = [o for o in render("base") if o["metadata"]["name"] == "dcam-triton-pods"]
    assert headless[0]["spec"]["clusterIP"] == "None"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/dev/shm" in mounts  # the Python backend needs more than a container's 64 MiB


def test_overlays_ask_for_what_they_run_on() -> None:
    cpu = _container(by_kind(render("overlays/cpu"))["Deployment"])
    gpu_deployment = by_kind(render("overlays/gpu"))["Deployment"]
    gpu = _container(gpu_deployment)
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--cuda-memory-pool-byte-size=0:$(CUDA_MEMORY_POOL_BYTES)" in gpu["args"]
    config_map = by_kind(render("overlays/gpu"))["ConfigMap"]
    assert int(config_map["data"]["CUDA_MEMORY_POOL_BYTES"]) > 0
    assert gpu["envFrom"][0]["configMapRef"]["name"] == config_map["metadata"]["name"]
    assert gpu_deployment["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_every_pin_is_the_release_dcam_builds_for() -> None:
    """One stock image, the release of build/releases.py, everywhere: base, both overlays (and
    the GPU overlay's initContainer) and the KServe runtime."""
    image = release(DEFAULT_RELEASE).image
    assert image == "nvcr.io/nvidia/tritonserver:26.07-py3"
    for folder in ("base", "overlays/cpu", "overlays/gpu", "components/volume"):
        spec = by_kind(render(folder))["Deployment"]["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] == image, (folder, container["name"])
    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    assert isvc["spec"]["predictor"]["model"]["runtimeVersion"] == f"{DEFAULT_RELEASE}-py3"


def test_gpu_pods_build_their_plans_in_their_own_image_on_the_volume() -> None:
    """build-plans runs the repository's build_plans.py in Triton's image on the pod's GPU, once
    the loader Job has put the build on the volume; it keeps the plans there (written by it
    alone) and links them where Triton reads; the nodes are picked by GPU product."""
    objects = by_kind(render("overlays/gpu"))
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in spec["initContainers"]}
    init = inits["build-plans"]
    triton = _container(objects["Deployment"])
    repository = objects["ConfigMap"]["data"]["MODEL_REPOSITORY"]
    assert repository.startswith("/models/builds/")  # one folder per build; the cache beside
    assert init["image"] == triton["image"] == inits["wait-for-repository"]["image"]
    script = " ".join(init["args"])
    assert init["args"][:2] == ["sh", "-c"] and 'until [ -d "$MODEL_REPOSITORY" ]' in script
    assert f'exec python3 "$MODEL_REPOSITORY/{SCRIPT}" --source="$MODEL_REPOSITORY"' in script
    # One cache per build: a new build never links to an older build's plans.
    assert '--cache="/models/plans/${MODEL_REPOSITORY##*/}" --link=/serving/repository' in script
    assert init["envFrom"][0] == triton["envFrom"][0]  # the ConfigMap: MODEL_REPOSITORY
    assert init["resources"]["limits"]["nvidia.com/gpu"] == "1"  # it builds on the GPU
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert mounts["/models"]["name"] == "models" and not mounts["/models"].get("readOnly")
    assert triton["args"][:2] == ["tritonserver", "--model-repository=/serving/repository"]
    served = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert served["/models"]["readOnly"] and served["/serving"]["readOnly"]  # the link's target
    assert served["/serving"]["name"] == mounts["/serving"]["name"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/serving"]["name"]]
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is False
    assert objects["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert set(spec["nodeSelector"]) == {"nvidia.com/gpu.product"}
    # No surge pod waiting for a GPU no node has spare.
    assert objects["Deployment"]["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": 0,
        "maxUnavailable": 1,
    }
    # The base reads object storage: no claim, no initContainer.
    base = by_kind(render("base"))
    assert "PersistentVolumeClaim" not in base
    assert "initContainers" not in base["Deployment"]["spec"]["template"]["spec"]
    assert base["ConfigMap"]["data"]["MODEL_REPOSITORY"].startswith("s3://")


def test_kserve_and_monitoring_resources() -> None:
    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["storageUri"].startswith("s3://")
    monitor = by_kind(render("monitoring"))["PodMonitor"]
    labels = by_kind(render("base"))["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_monitoring_ships_alert_rules_and_a_dashboard_grafana_loads() -> None:
    objects = by_kind(render("monitoring"))
    (config_map,) = [
        o for o in render("monitoring") if o["metadata"]["name"] == "dcam-grafana-dashboard"
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's label
    dashboard = json.loads(config_map["data"]["grafana-dashboard.json"])
    assert dashboard["uid"] and all(p["targets"] for p in dashboard["panels"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    (group,) = objects["PrometheusRule"]["spec"]["groups"]
    for rule in group["rules"]:
        assert rule["alert"].startswith("Dcam") and rule["expr"] and rule["for"]
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]
