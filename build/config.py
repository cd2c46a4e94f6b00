"""The build stage's configuration: one frozen dataclass, mapped 1:1 onto `dcam-build` flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from dcam.build.plans import HARDWARE_LEVELS
from dcam.build.releases import DEFAULT_RELEASE, release
from dcam.core.drift import DriftSpec
from dcam.core.errors import ConfigError

# cpu: ONNX Runtime inside Triton's Python backend (what the embedded server can run);
# onnx: Triton's native ONNX Runtime backend (platform onnxruntime_onnx, NVIDIA's containers);
# trt: prebuilt FP16 TensorRT plans.
TARGETS = ("auto", "cpu", "onnx", "trt")
ONNX_ACCELERATORS = ("none", "tensorrt")
LAYOUTS = ("auto", "ensemble", "fused")
BUILDERS = ("python", "trtexec")
# here: build and check the plans now (TensorRT and the serving GPU model here); pod: write the
# graphs and build_plans.py, and let the serving image build them on its GPU (deploy/).
PLAN_STEPS = ("here", "pod")
HARDWARE_COMPATIBILITY = tuple(HARDWARE_LEVELS)
# Queued requests per instance and per image of the largest batch, for a bounded queue: four
# full batches of one-image requests wait at most; past that the client's back-off is better
# than a longer queue.
QUEUE_BATCHES = 4
# 4x the p99 latency of the default client load (batch 8, 4 in flight: 691 ms at 256 px on 2
# CPU cores, benchmarks/README.md), so only a server far behind rejects.
QUEUE_TIMEOUT_MS = 3000


def networks_on_gpu(target: str, onnx_accelerator: str) -> bool:
    """Whether a (resolved) target runs the networks on a GPU: TensorRT plans, or ONNX graphs
    with a GPU accelerator."""
    return target == "trt" or (target == "onnx" and onnx_accelerator != "none")


@dataclass(frozen=True)
class BuildConfig:
    run_dir: str
    out: str
    target: str = "auto"  # auto: trt where TensorRT and a CUDA GPU are present, else cpu
    # ensemble: teacher || student -> postprocess; fused: one graph -> calibrate (numpy only,
    # so a GPU repository loads in the stock -py3 image); auto: fused on a GPU, else ensemble.
    layout: str = "auto"
    # The Triton container release that serves the build: its TensorRT decides the FP16 route
    # and must be the one that builds the plans (build/releases.py).
    triton_release: str = DEFAULT_RELEASE
    plans: str = "here"
    # TensorRT's hardware compatibility: none (this GPU model only, fastest), ampere+ (any
    # Ampere or newer GPU; fewer tactics, no cuDNN/cuBLAS), same-cc (this compute capability).
    hardware_compatibility: str = "none"
    max_batch_size: int = 32
    opt_batch_size: int = 8  # TensorRT profile optimum and Triton's preferred batch size
    min_batch_size: int = 1
    queue_delay_us: int = 2000  # bounded wait for dynamic batching to fill a batch
    # Longest a request waits in an image-taking model's queue before Triton rejects it (gRPC
    # UNAVAILABLE, which the client retries with back-off); 0: unbounded; None: QUEUE_TIMEOUT_MS
    # in NVIDIA's containers (trt, onnx), none on the embedded 2.51 (cpu), whose batcher with any
    # queue policy left requests waiting 0.5 s while cores idled: 18% of the client's throughput
    # (benchmarks/README.md, "Client transport").
    queue_timeout_ms: int | None = None
    # Requests a queue holds before rejecting new ones; 0: unbounded; None: bounded for
    # NVIDIA's containers from the release that fixed core#466 (QUEUE_BATCHES full batches per
    # instance), unbounded for the embedded tritonserver 2.51, which crashes when an ensemble
    # step rejects for it (dcam-serve refuses a bound).
    max_queue_size: int | None = None
    instances: int = 1  # instances per model
    threads: int = 0  # ONNX Runtime intra-op threads per session; 0: cores / sessions
    workspace_mib: int = 4096  # TensorRT builder workspace
    timing_cache: str | None = None  # TensorRT timing cache file (default: <out>.timing.cache)
    builder: str = "python"  # TensorRT Python API, or trtexec from NVIDIA's containers
    # --target onnx on a GPU: ONNX Runtime's TensorRT execution provider, FP16, builds engines
    # when the model loads (cached under onnx_engine_cache) instead of prebuilt plans.
    onnx_accelerator: str = "none"
    onnx_engine_cache: str = "/tmp/dcam-ort-trt-cache"
    tolerance: float = 1e-4  # max relative error ONNX Runtime vs PyTorch (FP32)
    fp16_tolerance: float = 2e-2  # max relative error of FP16 engines vs ONNX Runtime FP32
    opset: int = 17
    # Per-product counts, score histograms and drift on Triton's metrics port (core/drift.py).
    line_metrics: bool = True
    drift_window: int = DriftSpec.window  # images per product (under its threshold) drift is over
    drift_bins: int = DriftSpec.bins
    drift_alarm: float = DriftSpec.alarm  # PSI at or above which a product's alarm is on
    force: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("target", self.target, TARGETS),
            ("layout", self.layout, LAYOUTS),
            ("builder", self.builder, BUILDERS),
            ("plans", self.plans, PLAN_STEPS),
            ("hardware_compatibility", self.hardware_compatibility, HARDWARE_COMPATIBILITY),
            ("onnx_accelerator", self.onnx_accelerator, ONNX_ACCELERATORS),
        ):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {list(choices)}")
        if not 1 <= self.min_batch_size <= self.opt_batch_size <= self.max_batch_size:
            raise ConfigError(
                "need 1 <= min_batch_size <= opt_batch_size <= max_batch_size, got "
                f"{self.min_batch_size}, {self.opt_batch_size}, "
                f"{self.max_batch_size}"
            )
        if self.instances < 1 or min(self.queue_delay_us, self.threads) < 0:
            raise ConfigError("instances must be >= 1, queue_delay_us and threads >= 0")
        if min(self.queue_timeout_ms or 0, self.max_queue_size or 0) < 0:
            raise ConfigError("queue_timeout_ms and max_queue_size must be >= 0 (0: unbounded)")
        release(self.triton_release)  # an unknown release is refused before any work

        if self.onnx_accelerator != "none" and self.target != "onnx":
            raise ConfigError("--onnx-accelerator applies to --target onnx only")
        self.drift_spec()  # checks the drift settings now, not half-way through the build

    def drift_spec(self) -> DriftSpec | None:
        """The drift rule the judging models apply, None with line metrics off."""
        if not self.line_metrics:
            return None
        try:
            return DriftSpec(self.drift_window, self.drift_bins, self.drift_alarm)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def on_gpu(self, target: str) -> bool:
        """Whether the networks run on a GPU for this (resolved) target."""
        return networks_on_gpu(target, self.onnx_accelerator)

    def resolved_layout(self, target: str) -> str:
        """fused on a GPU (the stock image serves it: no torch), else ensemble."""
        if self.layout != "auto":
            return self.layout
        return "fused" if self.on_gpu(target) else "ensemble"

    def queue_timeout(self, target: str) -> int:
        """Milliseconds a request may wait where it enters (0: no timeout)."""
        if self.queue_timeout_ms is not None:
            return self.queue_timeout_ms
        return QUEUE_TIMEOUT_MS if target in ("trt", "onnx") else 0

    def queue_size(self, target: str) -> int:
        """Requests an image-taking model queues before rejecting (0: no bound)."""
        if self.max_queue_size is not None:
            return self.max_queue_size
        if target in ("trt", "onnx") and release(self.triton_release).bounded_queue:
            return QUEUE_BATCHES * self.max_batch_size * self.instances
        return 0

    def timing_cache_path(self) -> Path:
        """Where TensorRT's timing cache persists between builds: beside OUT, never inside the
        temporary build folder (whose random name would make every build start cold)."""
        return Path(self.timing_cache or f"{Path(self.out)}.timing.cache")

    def session_threads(self, sessions: int) -> int:
        """ONNX Runtime threads per session, sized so concurrent sessions share the cores."""
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(sessions, 1))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
