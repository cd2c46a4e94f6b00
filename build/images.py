"""Which stock NVIDIA Triton image serves a repository, decided from its configs.

What each image variant carries, as NVIDIA states it:
- NGC's tritonserver page (quoted in triton-inference-server/server#5461): "The xx.yy-py3
  image contains the Triton Inference Server with support for Tensorflow, PyTorch, TensorRT,
  ONNX and OpenVINO models. The xx.yy-pyt-python-py3 image contains the Triton Inference
  Server with support for PyTorch and Python backends only." The Python backend is part of
  the -py3 image too (python_backend README: "included in the Triton containers").
- The Python backend's interpreter has numpy (server `build.py` installs it with the backend)
  and no torch (server#4302 for -py3, #5461 for -pyt-python-py3: "No module named 'torch'").
A model that needs what no variant has (the ensemble layout's GPU post-processing imports
torch) is served by an image derived with deploy/images/torch-postprocess.Dockerfile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dcam.build.releases import DEFAULT_RELEASE, release
from dcam.build.sizing import plans_in_pod
from dcam.core.errors import ConfigError

VARIANTS = {  # variant -> (backends, Python packages the Python backend can import)
    "py3": (
        frozenset({"tensorrt", "onnxruntime", "pytorch", "tensorflow", "openvino", "python"}),
        frozenset({"numpy"}),
    ),
    "pyt-python-py3": (frozenset({"pytorch", "python"}), frozenset({"numpy"})),
}
PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}
DERIVED_IMAGE = "deploy/images/torch-postprocess.Dockerfile"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
# NVIDIA's stock image serves every layout on CPU and GPU alike; only the ensemble layout's GPU
# post-processing needs torch, and an image derived from it.
IMAGE_VARIANT = "py3"


def requirements(config) -> tuple[str | None, set[str]]:
    """(backend, Python packages) a model config needs; ensembles need no backend."""
    if config.platform == "ensemble":
        return None, set()
    backend = config.backend or PLATFORM_BACKENDS[config.platform]
    packages = {"numpy"} if backend == "python" else set()
    gpu_inputs = config.parameters.get("FORCE_CPU_ONLY_INPUT_TENSORS")
    if backend == "python" and gpu_inputs is not None and gpu_inputs.string_value == "no":
        packages.add("torch")  # DLPack tensors on the device (postprocess.py)
    return backend, packages


def stock_variant(configs: Mapping[str, object]) -> str | None:
    """The first stock variant that serves every model, or None (a derived image is needed)."""
    needs = [requirements(c) for c in configs.values()]
    for variant, (backends, packages) in VARIANTS.items():
        if all((b is None or b in backends) and p <= packages for b, p in needs):
            return variant
    return None


def unmet(configs: Mapping[str, object], variant: str) -> list[str]:
    """What `variant` lacks for these models, one line each."""
    backends, packages = VARIANTS[variant]
    lines = []
    for name, config in configs.items():
        backend, needed = requirements(config)
        if backend is not None and backend not in backends:
            lines.append(f"{name}: backend {backend}")
        lines += [f"{name}: Python package {p}" for p in sorted(needed - packages)]
    return lines


def image_tag(report: dict, requested: str | None) -> str:
    """The Triton container tag: plans load only in the release whose TensorRT built them, and
    graphs left to the pod were given the FP16 route of their release's TensorRT."""
    if report["target"] != "trt":
        return requested or f"{report.get('triton_release', DEFAULT_RELEASE)}-{IMAGE_VARIANT}"
    if plans_in_pod(report):
        prepared_for = report["triton_release"]
        if requested and not requested.startswith(f"{prepared_for}-"):
            raise ConfigError(
                f"the graphs were prepared for Triton release {prepared_for}, whose TensorRT "
                f"{release(prepared_for).tensorrt_major} decided their FP16 route, and the pods "
                f"build their plans in that image; --image-tag {requested} is another release: "
                f"build again with --triton-release {requested.split('-')[0]}"
            )
        return requested or f"{prepared_for}-{IMAGE_VARIANT}"
    built_in = report.get("triton_container")
    if built_in is None and requested is None:
        raise ConfigError(
            "these TensorRT plans were not built inside NVIDIA's Triton container, so the "
            "release that can run them is unknown: pass --image-tag with the release whose "
            f"TensorRT ({report['versions'].get('tensorrt', '?')}) built them, e.g. "
            f"{DEFAULT_RELEASE}-{IMAGE_VARIANT}"
        )
    if built_in and requested and not requested.startswith(f"{built_in}-"):
        raise ConfigError(
            f"the plans were built in Triton release {built_in}; --image-tag {requested} would "
            "run them on another TensorRT, which refuses them"
        )
    return requested or f"{built_in}-{IMAGE_VARIANT}"


def image_name(configs: dict, requested: str | None) -> str | None:
    """The image to run instead of NVIDIA's stock one: required where no stock variant serves
    the models (the ensemble layout's GPU post-processing imports torch)."""
    if requested is None and stock_variant(configs) is None:
        raise ConfigError(
            f"NVIDIA's {TRITON_IMAGE} lacks what these models need "
            f"({'; '.join(unmet(configs, IMAGE_VARIANT))}): build and push the image "
            f"{DERIVED_IMAGE} derives and pass it as --image, or build the repository "
            "with --layout fused (numpy only)"
        )
    if requested and re.search(r"[:@]", requested.rsplit("/", 1)[-1]):
        raise ConfigError(
            f"--image {requested}: give the name without tag or digest; the tag follows the "
            "build (--image-tag)"
        )
    return requested
