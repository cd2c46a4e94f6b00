"""deploy/components/{gateway,ingress-nginx-grpc,tls}: each renders on the base through a
throwaway kustomization, the entries send gRPC to the Service's gRPC port, and the TLS component
appends exactly the flags `dcam-serve` uses (serve/security.py), which the embedded tritonserver
is then started with to show they serve gRPC over TLS and lock the control APIs."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from dcam.core.names import API_KEY_HEADER
from dcam.serve.security import RESTRICTED_APIS, restricted_api_args
from dcam.serve.server import ServerConfig, TritonServer
from tests.test_deploy import DEPLOY, KUBERNETES, by_kind, render
from tests.test_security import certs  # noqa: F401 (a fixture: CA and server certificate)

GRPC_SERVICE = "inference.GRPCInferenceService"  # the KServe v2 gRPC service Triton serves
KEY_VAR = "$(DCAM_API_KEY)"
KEY = "k-entry-7d1e"
SERVICE = "dcam-triton"  # the Service both entries send to
CUSTOM_GROUPS = ("gateway.networking.k8s.io/",)  # no Kubernetes schema: fields checked below


def render_with(tmp_path: Path, component: str, on: str = "base") -> list[dict]:
    """`on` (a kustomization under deploy/) with one component, as an overlay would use it.
    Kustomize refuses absolute resource paths, so the throwaway kustomization names them
    relative to itself; render() takes the absolute folder as it is (DEPLOY / abs == abs)."""
    folder = tmp_path / f"{component}-on-{on.replace('/', '-')}"
    folder.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / on, folder)],
        "components": [os.path.relpath(DEPLOY / "components" / component, folder)],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(str(folder))


def _service(objects: list[dict]) -> dict:
    """The ClusterIP Service dcam-triton (the base also has the headless dcam-triton-pods)."""
    (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == SERVICE]
    return service


def _container(objects: list[dict]) -> dict:
    containers = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert containers[0]["name"] == "tritonserver"  # args.yaml patches containers/0
    return containers[0]


def _grpc_port(service: dict) -> int:
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    return port["port"]


def tls_args(tmp_path: Path, on: str = "base") -> tuple[list[str], list[str]]:
    """The Triton args without and with the TLS component."""
    before = _container(render(on))["args"]
    return before, _container(render_with(tmp_path, "tls", on))["args"]


@pytest.mark.parametrize("component", ["gateway", "ingress-nginx-grpc", "tls"])
def test_component_renders_on_the_base_and_validates(tmp_path: Path, component: str) -> None:
    objects = render_with(tmp_path, component)
    for obj in objects:
        if not obj["apiVersion"].startswith(CUSTOM_GROUPS):
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_grpc_route_sends_the_inference_service_to_the_services_grpc_port(
    tmp_path: Path,
) -> None:
    objects = render_with(tmp_path, "gateway")
    route, service = by_kind(objects)["GRPCRoute"], _service(objects)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    (parent,) = route["spec"]["parentRefs"]
    assert (parent["kind"], parent["name"]) == ("Gateway", "dcam-gateway")
    (rule,) = route["spec"]["rules"]
    assert [m["method"] for m in rule["matches"]] == [{"type": "Exact", "service": GRPC_SERVICE}]
    (backend,) = rule["backendRefs"]
    assert backend["kind"] == "Service" and backend["name"] == service["metadata"]["name"]
    assert backend["port"] == _grpc_port(service) == 8001
    _assert_port_reaches_tritons_grpc(objects, backend["port"])


def test_ingress_speaks_grpc_to_the_services_grpc_port_behind_tls(tmp_path: Path) -> None:
    objects = render_with(tmp_path, "ingress-nginx-grpc")
    ingress, service = by_kind(objects)["Ingress"], _service(objects)
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == (
        "GRPC"
    )
    (rule,) = ingress["spec"]["rules"]
    (tls,) = ingress["spec"]["tls"]
    assert rule["host"] in tls["hosts"] and tls["secretName"]  # nginx serves HTTP/2 over TLS
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["number"] == _grpc_port(service)
    _assert_port_reaches_tritons_grpc(objects, backend["port"]["number"])


def _assert_port_reaches_tritons_grpc(objects: list[dict], port: int) -> None:
    """The Service port leads to Triton's --grpc-port, and the NetworkPolicy admits it from
    the labelled namespaces (the Gateway's or the controller's)."""
    (service_port,) = [p for p in _service(objects)["spec"]["ports"] if p["port"] == port]
    container = _container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--grpc-port={ports[service_port['targetPort']]}" in container["args"]
    admitted = [
        rule
        for rule in by_kind(objects)["NetworkPolicy"]["spec"]["ingress"]
        if {"protocol": "TCP", "port": ports["grpc"]} in rule.get("ports", [])
    ]
    assert admitted and all("namespaceSelector" in p for r in admitted for p in r["from"])


@pytest.mark.parametrize("on", ["base", "overlays/cpu", "overlays/gpu"])
def test_tls_appends_its_flags_after_the_kept_args(tmp_path: Path, on: str) -> None:
    before, after = tls_args(tmp_path, on)
    assert after[0] == "tritonserver" and after[: len(before)] == before
    added = after[len(before) :]
    assert added[:3] == [
        "--grpc-use-ssl=true",
        "--grpc-server-cert=/tls/tls.crt",
        "--grpc-server-key=/tls/tls.key",
    ]
    assert len(added) == 5


def test_tls_mounts_its_secrets_and_defines_what_the_args_expand(tmp_path: Path) -> None:
    objects = render_with(tmp_path, "tls")
    spec = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    container = _container(objects)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tls"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "dcam-triton-tls"
    assert volume["secret"]["defaultMode"] == 0o440  # the pod's group (fsGroup) reads the key
    assert spec["securityContext"]["fsGroup"] == 1000
    env = {e["name"]: e for e in container["env"]}
    assert env["DCAM_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "dcam-api-key",
        "key": "api-key",
    }
    assert "optional" not in env["DCAM_API_KEY"]["valueFrom"]["secretKeyRef"]  # no key: no pod
    # Kubernetes expands $(VAR) in args only for variables the container defines.
    assert any(KEY_VAR in a for a in container["args"])
    # The cert-manager Certificate to apply by hand writes that Secret, for the Services' names.
    certificate = yaml.safe_load((DEPLOY / "components" / "tls" / "certificate.yaml").read_text())
    assert certificate["spec"]["secretName"] == volume["secret"]["secretName"]
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    assert services <= set(certificate["spec"]["dnsNames"])


def test_restricted_args_are_exactly_dcam_serves(tmp_path: Path) -> None:
    """The same APIs, header and flags as serve/security.py builds for `dcam-serve --api-key`."""
    before, after = tls_args(tmp_path)
    restricted = [a for a in after[len(before) :] if "restricted" in a]
    assert sorted(restricted) == sorted(restricted_api_args("0.0.0.0", KEY_VAR))
    for arg in restricted:
        apis, header = arg.split("=", 1)[1].split(":", 1)
        assert tuple(apis.split(",")) == RESTRICTED_APIS
        assert header == f"{API_KEY_HEADER}={KEY_VAR}"


def _as_the_pod_runs_them(args: list[str], secret_dir: Path) -> list[str]:
    """The component's args as Kubernetes hands them to tritonserver: the Secret's files at
    secret_dir instead of /tls, and $(DCAM_API_KEY) expanded from the Secret's key."""
    return [a.replace("=/tls/", f"={secret_dir}/").replace(KEY_VAR, KEY) for a in args]


def _refused(call) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.message()


@pytest.mark.triton
def test_rendered_tls_args_serve_grpc_over_tls_and_lock_the_control_apis(
    tmp_path: Path,
    certs: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    before, after = tls_args(tmp_path)
    secret_dir = tmp_path / "secret"  # laid out as the kubernetes.io/tls Secret mounts
    secret_dir.mkdir()
    shutil.copy(certs / "server.pem", secret_dir / "tls.crt")
    shutil.copy(certs / "server.key", secret_dir / "tls.key")
    repo = tmp_path / "repository"
    repo.mkdir()  # no models: the flags are what is under test
    extra = tuple(_as_the_pod_runs_them(after[len(before) :], secret_dir))
    with TritonServer(ServerConfig(repo, extra_args=extra)) as server:
        url = server.grpc_url
        tls = grpcclient.InferenceServerClient(
            url, ssl=True, root_certificates=str(certs / "ca.pem")
        )
        assert tls.is_server_live() and tls.is_server_ready()  # health stays open
        assert "restricted" in _refused(tls.get_model_repository_index)
        headers = {f"triton-grpc-protocol-{API_KEY_HEADER}": KEY}
        assert tls.get_model_repository_index(headers=headers) is not None
        plain = grpcclient.InferenceServerClient(url)
        _refused(plain.is_server_live)  # no TLS, no answer
        index = f"http://{server.http_url}/v2/repository/index"
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(urllib.request.Request(index, b"{}", method="POST"))
        assert http.value.code == 403
        keyed = urllib.request.Request(index, b"{}", {API_KEY_HEADER: KEY}, method="POST")
        with urllib.request.urlopen(keyed) as response:
            assert response.status == 200
