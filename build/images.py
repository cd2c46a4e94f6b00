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

from collections.abc import Mapping

VARIANTS = {  # variant -> (backends, Python packages the Python backend can import)
    "py3": (
        frozenset({"tensorrt", "onnxruntime", "pytorch", "tensorflow", "openvino", "python"}),
        frozenset({"numpy"}),
    ),
    "pyt-python-py3": (frozenset({"pytorch", "python"}), frozenset({"numpy"})),
}
PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}
DERIVED_IMAGE = "deploy/images/torch-postprocess.Dockerfile"


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
