"""TensorRT FP16 engines from the simplified ONNX graphs (TensorRT 10 Python API or trtexec).

NOT EXECUTED on this project's machines: TensorRT cannot be installed there (see README). The
code is kept small; everything around it (ONNX export, profiles, configs) is tested. Engines are
raw `model.plan` files with no header; build them with the TensorRT version of the Triton
container that serves them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dcam.core.errors import BuildError
from dcam.core.files import write_atomic

# NVIDIA's TensorRT and Triton containers keep trtexec here, off PATH.
TRTEXEC_FALLBACKS = (Path("/usr/src/tensorrt/bin/trtexec"),)


def has_fast_fp16(capability: tuple[int, int]) -> bool:
    """Full-rate FP16 arithmetic by compute capability (CUDA C++ Programming Guide, arithmetic
    instruction throughput): 5.3, 6.0, 6.2 and 7.0 on; 6.1 (consumer Pascal) runs FP16 at 1/64.
    Replaces TensorRT's platform_has_fast_fp16, deprecated in TensorRT 10 (TRT_DEPRECATED in the
    IBuilder API reference)."""
    return capability >= (7, 0) or capability in ((5, 3), (6, 0), (6, 2))


def find_trtexec(fallbacks: tuple[Path, ...] = TRTEXEC_FALLBACKS) -> Path:
    """trtexec on PATH, else where NVIDIA's containers install it; BuildError when neither."""
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    for path in fallbacks:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise BuildError(
        f"trtexec is neither on PATH nor at {', '.join(map(str, fallbacks))}; use "
        "--builder python, or build inside NVIDIA's TensorRT or Triton container"
    )


def missing_for_trt() -> list[str]:
    """What the TensorRT target lacks here (empty when it can run)."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("the tensorrt Python package (TensorRT 10; NVIDIA's containers ship it)")
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    return missing


def gpu_info() -> dict:
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
    }


def build_engine_python(
    onnx_path: Path,
    plan_path: Path,
    shapes: dict[str, tuple],
    workspace_mib: int,
    timing_cache: Path,
) -> None:
    """Parse ONNX, set an FP16 profile over batch, persist the timing cache, write the plan.

    The FP16 builder flag is deprecated from TensorRT 10.12 (strongly typed networks from an FP16
    ONNX replace it) but still builds. In the ensemble layout the cosine and normalisation run in
    FP32 in the post-processing model; in the fused layout TensorRT may run them in FP16, which
    the map maths survives: it is overflow-safe by construction (core/anomaly_map.py `_unit`).
    """
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    capability = torch.cuda.get_device_capability()
    if not has_fast_fp16(capability):
        raise BuildError(
            f"this GPU (compute capability {capability[0]}.{capability[1]}) has no fast FP16; "
            "refusing to build an FP32 engine instead"
        )
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BuildError(
            f"TensorRT refused the timing cache {timing_cache} (made by another TensorRT version "
            "or GPU); delete it or pass another --timing-cache"
        )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT returned no engine for {onnx_path} (see the log above)")
    plan_path.write_bytes(bytes(plan))
    cache_bytes = bytes(config.get_timing_cache().serialize())
    write_atomic(timing_cache, lambda fh: fh.write(cache_bytes))  # shared across builds


def trtexec_command(
    onnx_path: Path,
    plan_path: Path,
    shapes: dict[str, tuple],
    workspace_mib: int,
    timing_cache: Path,
) -> list[str]:
    """The equivalent trtexec call (it ships in NVIDIA's TensorRT and Triton containers)."""

    def spec(i: int) -> str:
        return ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in shapes.items())

    return [
        "trtexec",  # replaced by the path find_trtexec resolves
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        "--fp16",
        f"--minShapes={spec(0)}",
        f"--optShapes={spec(1)}",
        f"--maxShapes={spec(2)}",
        f"--memPoolSize=workspace:{workspace_mib}M",
        f"--timingCacheFile={timing_cache}",
        "--skipInference",
    ]


def build_engine_trtexec(*args) -> None:
    cmd = [str(find_trtexec()), *trtexec_command(*args)[1:]]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"trtexec failed ({result.returncode}):\n{result.stdout[-4000:]}")


def run_engine(plan_path: Path, feeds: dict, output_names: list[str]) -> list:
    """Run a plan on the GPU through torch tensors; used to compare FP16 with ORT FP32."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    tensors = {}
    for name, array in feeds.items():
        tensors[name] = torch.from_numpy(array).cuda()
        context.set_input_shape(name, tuple(array.shape))
    for name in output_names:
        shape = tuple(context.get_tensor_shape(name))
        dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bool: torch.bool}[
            engine.get_tensor_dtype(name)
        ]
        tensors[name] = torch.empty(shape, dtype=dtype, device="cuda")
    for name, tensor in tensors.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise BuildError(f"TensorRT failed to run {plan_path}")
    stream.synchronize()
    return [tensors[n].float().cpu().numpy() for n in output_names]
