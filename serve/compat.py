"""What the embedded tritonserver (2.51, from the nvidia-pytriton wheel) cannot serve safely,
found in the repository's configs before it starts.

A step of an ensemble that rejects a request because its queue is full (`max_queue_size`) made
that server crash with SIGSEGV under load (seen here; Triton's bug "Ensemble requests stuck
indefinitely when the step max_queue_size exceeded", triton-inference-server/core#466, fixed in
core#470, first in release 26.02: `dcam.build.releases.QUEUE_FIX_RELEASE`). Queue timeouts
(`default_timeout_microseconds`) do not crash it and stay allowed. NVIDIA's containers with the
fix serve such a repository as it is.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dcam.core.errors import ServerError


def read_configs(repo: Path) -> dict[str, mc.ModelConfig]:
    configs = {}
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        try:
            configs[path.parent.name] = text_format.Parse(path.read_text(), mc.ModelConfig())
        except text_format.ParseError as exc:
            raise ServerError(f"{path} is not a valid Triton model config: {exc}") from exc
    return configs


def queue_size_bounds(config: mc.ModelConfig) -> int:
    """The largest max_queue_size the model's default or priority queue policies set (0: none)."""
    batching = config.dynamic_batching
    policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
    return max(p.max_queue_size for p in policies)


# Platforms whose backends the wheel does not carry (it has the Python backend only).
MISSING_BACKENDS = {"onnxruntime_onnx": "ONNX Runtime", "tensorrt_plan": "TensorRT"}


def check_embedded_server_can_serve(repo: Path) -> None:
    """Refuse, with the reason, a repository that needs a backend the embedded server lacks or
    whose ensemble steps bound their queue size."""
    configs = read_configs(repo)
    needs = {
        n: MISSING_BACKENDS[c.platform]
        for n, c in configs.items()
        if c.platform in MISSING_BACKENDS
    }
    if needs:
        raise ServerError(
            f"models {sorted(needs)} need Triton's {', '.join(sorted(set(needs.values())))} "
            "backend, which the embedded tritonserver (Python backend only) lacks: serve this "
            "repository with NVIDIA's Triton container (deploy/), or build it with --target cpu"
        )
    steps = {
        step.model_name
        for config in configs.values()
        if config.platform == "ensemble"
        for step in config.ensemble_scheduling.step
    }
    bounded = sorted(name for name in steps & configs.keys() if queue_size_bounds(configs[name]))
    if bounded:
        raise ServerError(
            f"ensemble steps {bounded} set dynamic_batching max_queue_size: the embedded "
            "tritonserver 2.51 crashes when such a step rejects a request (Triton core#466). "
            "Rebuild with --max-queue-size 0 (queue timeouts are safe), or serve the repository "
            "with Triton 26.02 or later (NVIDIA's containers, deploy/), which have the fix."
        )
