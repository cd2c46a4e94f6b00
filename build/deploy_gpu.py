"""GPU nodes for `dcam-build deploy`: which GPU product the pods run on, and where the pods build
their plans (the GPU overlay's `build-plans` initContainer, build/plans.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dcam.build.sizing import plans_in_pod
from dcam.core.errors import ConfigError

GPU_PRODUCT = "nvidia.com/gpu.product"  # set by NVIDIA's GPU feature discovery
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
MOUNT = "/models"  # deploy/base's model volume
PLAN_CACHE = f"{MOUNT}/plans"  # the GPU overlay's `build-plans --cache`
GPU_OVERLAY = "overlays/gpu"


def label_value(value: str) -> str:
    if not LABEL_VALUE.fullmatch(value):
        raise ConfigError(
            f"{value!r} is not a Kubernetes label value; GPU feature discovery labels the "
            f"nodes {GPU_PRODUCT}=<NVML's GPU name, dashes for spaces>, e.g. NVIDIA-H200 "
            f"(kubectl get nodes -L {GPU_PRODUCT})"
        )
    return value


def gpu_product(report: dict, requested: str | None) -> str | None:
    """The nvidia.com/gpu.product the pods run on; None: any GPU (ONNX Runtime builds its
    engines when the model loads)."""
    if report["target"] != "trt":
        return label_value(requested) if requested else None
    if plans_in_pod(report):
        if not requested:
            raise ConfigError(
                "the pods build their plans for the GPU they run on, and they should all run "
                f"on one GPU model: pass --gpu-product, the nodes' {GPU_PRODUCT} label "
                f"(kubectl get nodes -L {GPU_PRODUCT})"
            )
        return label_value(requested)
    gpu = report.get("gpu") or {}
    built_on = gpu["gpu"].replace(" ", "-") if gpu.get("gpu") else None
    portable = gpu.get("hardware_compatibility", "none") != "none"
    if requested and built_on and requested != built_on and not portable:
        raise ConfigError(
            f"the plans were built on {gpu['gpu']} ({GPU_PRODUCT}={built_on}) without hardware "
            f"compatibility and load only there, not on {requested}: build them on that GPU, "
            "or with --plans pod"
        )
    if not (requested or built_on):
        raise ConfigError(
            f"the build report names no GPU for these plans: pass --gpu-product, the {GPU_PRODUCT} "
            "label of the GPU model that built them"
        )
    return label_value(requested or built_on)


def serving_args_patch(deploy_dir: Path) -> list[dict]:
    """JSON6902 operations pointing the GPU overlay's tritonserver at the repository itself (no
    link): its one --model-repository argument replaced in place, so that flags components
    append (TLS) stay."""
    patch = yaml.safe_load((deploy_dir / GPU_OVERLAY / "gpu.yaml").read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    args = container["args"]  # after the image's entrypoint: tritonserver first
    at = [i for i, a in enumerate(args) if a.startswith("--model-repository=")]
    if args[0] != "tritonserver" or len(at) != 1:
        raise ConfigError(
            f"{deploy_dir}/overlays/gpu/gpu.yaml: args must be tritonserver and its flags, with "
            "one --model-repository"
        )
    path = f"/spec/template/spec/containers/0/args/{at[0]}"
    return [{"op": "replace", "path": path, "value": "--model-repository=$(MODEL_REPOSITORY)"}]


ENGINE_CACHE_SUBPATH = "ort-trt-cache"  # on the model volume, beside builds/ and plans/


def engine_cache(report: dict) -> str | None:
    """Where ONNX Runtime's TensorRT accelerator keeps the engines it builds at load (the
    build's --onnx-engine-cache), for builds that use it; None for others."""
    config = report["config"]
    if report["target"] != "onnx" or config.get("onnx_accelerator") != "tensorrt":
        return None
    return config.get("onnx_engine_cache", "/tmp/dcam-ort-trt-cache")


def engine_cache_patch(report: dict, volume: bool, digest: str) -> tuple[list[dict], list[dict]]:
    """(mounts, volumes) that keep ONNX Runtime's TensorRT engines on the model volume, so a new
    pod loads them instead of building them for minutes; nothing without a volume (object
    storage), where the next steps say so. Triton's own /models mount stays read-only."""
    cache = engine_cache(report)
    if cache is None or not volume:
        return [], []
    # Per build: ONNX Runtime's cache must not outlive its model (ORT's TensorRT EP docs).
    mount = {"name": "models", "mountPath": cache, "subPath": f"{ENGINE_CACHE_SUBPATH}/{digest}"}
    claim = {"claimName": "dcam-models", "readOnly": False}  # each mount sets its own mode
    return [mount], [{"name": "models", "persistentVolumeClaim": claim}]
