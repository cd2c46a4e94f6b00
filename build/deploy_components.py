"""The Kustomize components of deploy/components that `dcam-build deploy` adds to an overlay, and
what it fills in for them (the KEDA query's namespace)."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcam.core.errors import ConfigError

DEPLOYMENT = "dcam-triton"
VOLUME_COMPONENT = "components/volume"  # the GPU overlay has it already
AUTOSCALING = {
    "none": None,
    "hpa": "components/autoscaling-hpa",
    "keda": "components/autoscaling-keda",
}


ENTRY = {
    "none": None,
    "gateway": "components/gateway",  # a Gateway API GRPCRoute
    "ingress-nginx": "components/ingress-nginx-grpc",
}
TLS = "components/tls"  # gRPC over TLS and the locked control APIs, from Secrets
GATEWAY_TLS = "components/gateway-tls"  # the Gateway dials TLS pods: a BackendTLSPolicy
MONITORING = "monitoring"  # PodMonitor, alert rules, dashboard (Prometheus Operator)


def chosen(volume: bool, autoscaling: str, entry: str, tls: bool, monitoring: bool) -> list[str]:
    """The components of deploy/ an overlay lists, in the order they apply."""
    if entry not in ENTRY:
        raise ConfigError(f"--entry {entry}: choose {', '.join(ENTRY)}")
    return [
        *([VOLUME_COMPONENT] if volume else []),
        *([AUTOSCALING[autoscaling]] if AUTOSCALING[autoscaling] else []),
        *([ENTRY[entry]] if ENTRY[entry] else []),
        *([TLS] if tls else []),
        *([GATEWAY_TLS] if tls and entry == "gateway" else []),
        *([MONITORING] if monitoring else []),
    ]


def ingress_tls_patch() -> dict:
    """ingress-nginx speaks TLS to pods that serve it (components/tls): backend protocol GRPCS
    (ingress-nginx docs/examples/grpc)."""
    key = "/metadata/annotations/nginx.ingress.kubernetes.io~1backend-protocol"
    operation = [{"op": "replace", "path": key, "value": "GRPCS"}]
    return {"patch": yaml.safe_dump(operation), "target": {"kind": "Ingress"}}


def release_label_patches(release: str) -> list[dict]:
    """kube-prometheus-stack finds PodMonitors and PrometheusRules by the label `release: <its
    Helm release>`: this deployment's release on both."""
    operation = [{"op": "add", "path": "/metadata/labels/release", "value": release}]
    return [
        {"patch": yaml.safe_dump(operation), "target": {"kind": kind}}
        for kind in ("PodMonitor", "PrometheusRule")
    ]


KEDA_TOKEN = 'namespace="dcam"'  # components/autoscaling-keda's query placeholder


def keda_namespace_patch(deploy_dir: Path, namespace: str | None) -> dict:
    """The ScaledObject's query filtered to this deployment's namespace: Prometheus sees every
    namespace, and other installs' load must not scale these pods."""
    if not namespace:
        raise ConfigError("--autoscaling keda reads Prometheus by namespace: pass --namespace")
    scaled = yaml.safe_load((deploy_dir / AUTOSCALING["keda"] / "scaledobject.yaml").read_text())
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    if KEDA_TOKEN not in query:
        raise ConfigError(f"{AUTOSCALING['keda']}/scaledobject.yaml: no {KEDA_TOKEN} in its query")
    value = query.replace(KEDA_TOKEN, f'namespace="{namespace}"')
    operation = {"op": "replace", "path": "/spec/triggers/0/metadata/query", "value": value}
    return {
        "patch": yaml.safe_dump([operation]),
        "target": {"group": "keda.sh", "kind": "ScaledObject", "name": DEPLOYMENT},
    }
