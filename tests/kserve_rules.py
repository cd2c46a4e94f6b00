"""KServe's InferenceService rules that dcam's manifests rely on. KServe publishes no package of
its CRD's schema, so these are its documented rules, each cited (tests/test_crd_schemas.py uses
them on deploy/kserve and on the InferenceServices `dcam-build deploy` writes)."""

from __future__ import annotations

import re

import kubernetes_validate

from tests.test_deploy import KUBERNETES

# KServe publishes no package of its CRD's schema; these are its documented rules.
# [webhook] https://github.com/kserve/kserve/blob/master/pkg/apis/serving/v1beta1/inference_service_validation.go
#   the name must match IsvcNameFmt; each component has exactly one implementation.
# [api] https://kserve.github.io/website/docs/reference/crd-api (v1beta1 PredictorSpec, ModelSpec,
#   ComponentExtensionSpec): minReplicas defaults to 1 and may be 0, maxReplicas bounds it (the
#   webhook refuses min > max); PredictorSpec inlines the core PodSpec and ModelSpec the core
#   Container, next to modelFormat, runtimeVersion and storageUri.
# [storage] kserve/kserve SupportedStorageURIPrefixList: the storage initializer's URI schemes.
# [triton] https://kserve.github.io/website/docs/model-serving/predictive-inference/frameworks/triton/torchscript
#   modelFormat name `triton`; "only one port is allowed to expose either HTTP or gRPC"; in
#   Knative (serverless) mode the gRPC port is named h2c, in standard (raw) deployments
#   <protocol>[-<suffix>].

ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # [webhook] IsvcNameFmt
STORAGE_SCHEMES = ("gs", "s3", "pvc", "file", "https", "http", "hdfs", "webhdfs", "oci", "hf")
IMPLEMENTATIONS = {
    "model", "containers", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx",
    "huggingface", "pmml", "lightgbm", "paddle",
}  # fmt: skip
EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
    "annotations", "deploymentStrategy", "autoScaling", "workerSpec",
}  # fmt: skip
MODEL_FIELDS = {
    "modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage",
}  # fmt: skip
RAW_MODES = {"RawDeployment", "Standard"}  # serving.kserve.io/deploymentMode, old and new name


def _replica_problems(predictor: dict) -> list[str]:
    low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas")
    if not isinstance(low, int) or low < 0:
        return [f"minReplicas must be an integer >= 0, not {low!r}"]
    if high is not None and (not isinstance(high, int) or high < low):
        return [f"maxReplicas must be an integer >= minReplicas, not {high!r}"]
    return []


def _core_problems(name: str, predictor: dict, model: dict) -> list[str]:
    """The inlined PodSpec and Container, checked by the core schemas (unknown fields too)."""
    container = {k: v for k, v in model.items() if k not in MODEL_FIELDS}
    pod_spec = {k: v for k, v in predictor.items() if k not in IMPLEMENTATIONS | EXTENSION_FIELDS}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {**pod_spec, "containers": [{**container, "name": "kserve-container"}]},
    }
    try:
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"predictor as a core Pod: {error.message}"]
    return []


def _port_problems(isvc: dict, model: dict) -> list[str]:
    ports = model.get("ports", [])
    if len(ports) > 1:
        return ["only one port may be exposed (HTTP or gRPC)"]
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    for port in ports:
        name = port.get("name", "")
        if mode in RAW_MODES and not re.fullmatch(r"(grpc|http)(-[-a-z0-9]+)?", name):
            return [f"port name {name!r} is not <protocol>[-<suffix>]"]
        if mode not in RAW_MODES and name not in ("h2c", "http1"):
            return [f"port name {name!r}: Knative serves gRPC on a port named h2c"]
    return []


def kserve_problems(isvc: dict) -> list[str]:
    """What KServe would refuse, or serve otherwise than we mean, in an InferenceService."""
    name = isvc.get("metadata", {}).get("name", "")
    predictor = isvc.get("spec", {}).get("predictor", {})
    implementations = sorted(IMPLEMENTATIONS & predictor.keys())
    if implementations != ["model"]:
        return [f"the predictor needs exactly the `model` implementation, not {implementations}"]
    model = predictor["model"]
    problems = [] if ISVC_NAME.match(name) else [f"name {name!r} does not match IsvcNameFmt"]
    if model.get("modelFormat", {}).get("name") != "triton":
        problems.append("modelFormat.name must be triton (KServe's Triton runtime)")
    if not isinstance(model.get("runtimeVersion"), str):
        problems.append("runtimeVersion must be a string (the Triton image tag)")
    scheme = str(model.get("storageUri", "")).partition("://")[0]
    if scheme not in STORAGE_SCHEMES:
        problems.append(f"storageUri scheme {scheme!r} is not one of {STORAGE_SCHEMES}")
    problems += _replica_problems(predictor) + _port_problems(isvc, model)
    return problems + _core_problems(name or "isvc", predictor, model)
