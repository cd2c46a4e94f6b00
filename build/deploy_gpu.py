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
GPU_REPOSITORY = f"{MOUNT}/repository"  # the GPU overlay's MODEL_REPOSITORY
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


def serving_args(deploy_dir: Path) -> list[str]:
    """The GPU overlay's tritonserver arguments, reading the repository itself (no link)."""
    patch = yaml.safe_load((deploy_dir / GPU_OVERLAY / "gpu.yaml").read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if not a.startswith("--model-repository=")]
    if len(args) != len(container["args"]) - 1:
        raise ConfigError(f"{deploy_dir}/overlays/gpu/gpu.yaml sets no single --model-repository")
    return ["--model-repository=$(MODEL_REPOSITORY)", *args]


def check_plan_cache(repository: str, in_object_storage: bool) -> None:
    """The pod builds plans from a repository on the volume into PLAN_CACHE beside it."""
    where, cache = Path(repository), Path(PLAN_CACHE)
    if in_object_storage or not where.is_relative_to(MOUNT):
        raise ConfigError(
            f"the pods build their plans from the repository on the model volume ({MOUNT}), "
            f"not from {repository}: pass --model-repository {GPU_REPOSITORY}, or build the "
            "plans with --plans here"
        )
    if where.is_relative_to(cache) or cache.is_relative_to(where):
        raise ConfigError(
            f"--model-repository {repository} and the plan cache {PLAN_CACHE} overlap (the "
            f"cache holds copies of the repository): use a folder such as {GPU_REPOSITORY}"
        )
