"""TensorRT FP16 engines built here, through TensorRT's Python API (10 or 11) or trtexec.

NOT EXECUTED on this project's machines: TensorRT cannot be installed there (see README). The
code is kept small; what it consumes (the FP16 graphs, the shapes, the trtexec commands, the
version rules) is tested. Engines are raw `model.plan` files with no header, built with the
TensorRT of the Triton release that serves them (build/releases.py). The in-container route,
with nothing but trtexec, is build/plans.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcam.build import plans
from dcam.build.releases import SUPPORTED_TENSORRT, require_supported_tensorrt
from dcam.core.errors import BuildError
from dcam.core.files import write_atomic


def has_fast_fp16(capability: tuple[int, int]) -> bool:
    """Full-rate FP16 arithmetic by compute capability (CUDA C++ Programming Guide, arithmetic
    instruction throughput): 5.3, 6.0, 6.2 and 7.0 on; 6.1 (consumer Pascal) runs FP16 at 1/64.
    Replaces TensorRT's platform_has_fast_fp16, deprecated in TensorRT 10 and removed in 11."""
    return capability >= (7, 0) or capability in ((5, 3), (6, 0), (6, 2))


def installed_tensorrt() -> str | None:
    """The importable TensorRT's version, or None."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def missing_for_trt() -> list[str]:
    """What building plans here lacks (empty when it can run)."""
    missing = []
    if installed_tensorrt() is None:
        missing.append(
            f"TensorRT {' or '.join(f'{m}.x' for m in SUPPORTED_TENSORRT)} (its Python package; "
            "NVIDIA's Triton containers ship trtexec)"
        )
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    return missing


def gpu_info(hardware: str) -> dict:
    """What a plan is tied to: TensorRT's version, the GPU and the compatibility level."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt": installed_tensorrt(),
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
        "hardware_compatibility": hardware,
    }


@dataclass(frozen=True)
class PlanSpec:
    """One plan to build: its graph, where it goes, the input's (min, opt, max) shapes, the
    builder's workspace, the timing cache shared across builds, the compatibility level."""

    onnx_path: Path
    plan_path: Path
    shapes: dict[str, tuple]
    workspace_mib: int
    timing_cache: Path
    hardware: str = "none"


def build_engine_python(spec: PlanSpec) -> None:
    """Parse ONNX, set a profile over batch, persist the timing cache, write the plan.

    TensorRT 11 networks are always strongly typed and its FP16 flag is gone: `spec.onnx_path`
    is the FP16 graph (build/precision.py), whose types the builder keeps. TensorRT 10 gets the
    FP32 graph and the FP16 builder flag (weak typing: TensorRT picks each layer's precision).
    """
    import tensorrt as trt

    major = require_supported_tensorrt(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 11: strongly typed whatever the flags
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {spec.onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    if major == 10:
        _weak_fp16(config, trt)
    if spec.hardware != "none":
        level = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}[spec.hardware]
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in spec.shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_file = spec.timing_cache
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BuildError(
            f"TensorRT refused the timing cache {cache_file} (made by another TensorRT version "
            "or GPU); delete it or pass another --timing-cache"
        )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT returned no engine for {spec.onnx_path} (see the log above)")
    spec.plan_path.write_bytes(bytes(plan))
    cache_bytes = bytes(config.get_timing_cache().serialize())
    write_atomic(cache_file, lambda fh: fh.write(cache_bytes))  # shared across builds


def _weak_fp16(config, trt) -> None:
    """TensorRT 10's FP16 flag, refused on a GPU without fast FP16 rather than built in FP32."""
    import torch

    capability = torch.cuda.get_device_capability()
    if not has_fast_fp16(capability):
        raise BuildError(
            f"this GPU (compute capability {capability[0]}.{capability[1]}) has no fast FP16; "
            "refusing to build an FP32 engine instead"
        )
    config.set_flag(trt.BuilderFlag.FP16)


def build_engine_trtexec(spec: PlanSpec) -> None:
    """The same build through trtexec (the command build_plans.py runs in the container)."""
    version = installed_tensorrt() or plans.tensorrt_version(find_trtexec())
    cmd = plans.trtexec_command(
        find_trtexec(),
        str(spec.onnx_path),
        str(spec.plan_path),
        {name: [list(s) for s in three] for name, three in spec.shapes.items()},
        spec.workspace_mib,
        str(spec.timing_cache),
        require_supported_tensorrt(version),
        spec.hardware,
    )
    try:
        plans.run(cmd)
    except plans.PlanError as exc:
        raise BuildError(str(exc)) from exc


def find_trtexec() -> str:
    try:
        return plans.find_trtexec()
    except plans.PlanError as exc:
        raise BuildError(f"{exc}; use --builder python, or build in NVIDIA's container") from exc


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
