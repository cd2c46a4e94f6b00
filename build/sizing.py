"""What one pod of a build needs: CPU, memory, the CUDA pool and the model volume's size, read
from the repository's build report, manifest and configs (for `dcam-build deploy`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dcam.build.config import networks_on_gpu
from dcam.core.errors import ConfigError
from dcam.core.manifest import Manifest
from dcam.core.names import ENTRY_MODELS
from dcam.serve.compat import read_configs

# Host memory, MiB. Measured on the CPU in the soak (benchmarks/results/soak-20261130.md):
# tritonserver held about 240 MiB and a Python-backend stub about 190 MiB at rest.
CPU_BASE_MIB = 512
# Estimated, never run: CUDA's and TensorRT's libraries in tritonserver, and PyTorch in the
# post-processing stub where a derived image carries it.
GPU_BASE_MIB = 4096
# Under plans/ on the volume, per GPU model and release the pods ran on: a copy of the
# repository and a plan per graph (about the size of its FP16 graph); one such copy counted.
PLAN_COPIES = 2
# ONNX Runtime's arena keeps the largest batch's intermediates; the stem's output alone is four
# times the layer1 map, so the three levels' maps are scaled by this per network.
ACTIVATION_FACTOR = 4
MAPS_PER_IMAGE = 4  # post-processing: per-level maps upsampled, their sum, the blurred map
# The CUDA pool carries the features between ensemble steps: two batches in flight, each
# double-buffered, per instance.
POOL_BATCHES = 4
MIB = 1 << 20


@dataclass(frozen=True)
class Sizing:
    """Per-pod figures the overlay sets, with how each was derived in `sizing`."""

    cpu: str | None  # None: keep the overlay's (GPU pods: decode and post-processing only)
    memory_request_mib: int
    memory_limit_mib: int
    cuda_pool_bytes: int | None
    storage_gib: int


def feature_bytes(manifest: Manifest) -> int:
    """Bytes of one network's float32 feature maps (all levels) for one image."""
    height, width = manifest.input_size
    channels, strides = manifest.data["feature_channels"], manifest.data["feature_strides"]
    return sum(
        4 * c * math.ceil(height / s) * math.ceil(width / s)
        for c, s in zip(channels, strides, strict=True)
    )


def image_models(configs: dict) -> list[str]:
    """The models that run a network: those requests enter (not post-processing)."""
    return [name for name in configs if name in ENTRY_MODELS]


def _instances(config) -> int:
    return sum(group.count for group in config.instance_group) or 1


def _threads(config) -> int:
    """ONNX Runtime's intra-op threads per instance (0 on GPU models, which set none)."""
    param = config.parameters.get("intra_op_thread_count")
    return int(param.string_value) if param is not None else 0


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def runs_on_gpu(report: dict) -> bool:
    return networks_on_gpu(report["target"], report["config"].get("onnx_accelerator", "none"))


def plans_in_pod(report: dict) -> bool:
    """TensorRT graphs whose plans the serving pod builds (`--plans pod`); reports from before
    the choice existed had their plans built where the build ran."""
    return report["target"] == "trt" and report.get("plans", "here") == "pod"


def sizing(repo: Path, report: dict, manifest: Manifest) -> Sizing:
    """CPU: the ONNX Runtime threads the configs give each instance; memory: a base plus weights
    and the largest batch's activations; GPU: a CUDA pool for the features of full batches."""
    gpu = runs_on_gpu(report)
    if not gpu and not report["config"]["threads"]:
        raise ConfigError(
            f"{repo} was built with --threads 0, so its configs give ONNX Runtime the cores of "
            "the machine that built it, not of the pods: build it again with --threads N, the "
            "cores each network may use on a pod (the pod then asks for 2 x N)"
        )
    configs = read_configs(repo)
    models = image_models(configs)
    batch = report["config"]["max_batch_size"]
    instances = max(_instances(configs[m]) for m in models)
    nets = 2  # teacher and student, as two models or inside the fused graph
    features = feature_bytes(manifest)
    weights = sum(f.stat().st_size for m in models for f in (repo / m).rglob("model.*"))
    height, width = manifest.input_size
    per_batch = batch * (nets * ACTIVATION_FACTOR * features + MAPS_PER_IMAGE * 4 * height * width)
    base = GPU_BASE_MIB if gpu else CPU_BASE_MIB
    request = _round_up(base + (2 * weights + instances * per_batch) / MIB, 256)
    threads = sum(_threads(configs[m]) * _instances(configs[m]) for m in models)
    pool = POOL_BATCHES * instances * batch * nets * features
    size = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
    copies = 1 + (PLAN_COPIES if plans_in_pod(report) else 0)
    return Sizing(
        cpu=None if gpu else str(max(threads, 1)),
        memory_request_mib=request,
        memory_limit_mib=_round_up(request * 1.5, 256),
        cuda_pool_bytes=1 << math.ceil(math.log2(pool)) if gpu else None,
        # room for the next version
        storage_gib=max(1, math.ceil(2 * copies * size / (1 << 30))),
    )
