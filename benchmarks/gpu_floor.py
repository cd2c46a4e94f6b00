"""The GPU check's instruments: the floor (what one image costs, what the device can do), the
probes (the TF32 flags a row runs with, the memory format its first convolution really sees) and
the ways a batch reaches the device (already there, copied from host memory, decoded from PNG).

Reads a model and a device; writes nothing (gpu_check.py records what these return). The floor
is a large FP16 matmul's measured rate (dense tensor cores) over the FLOP one image costs: the
rate the pipeline would reach if all its counted work ran as fast as that matmul.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

# FP16 dense tensor-core FLOP per SM per clock, by compute capability (NVIDIA's whitepapers:
# A100 312 TFLOP/s = 108 SMs x 1.41 GHz x 2048; H100/H200 SXM 989 TFLOP/s = 132 x 1.83 GHz x 4096).
FP16_DENSE_FLOP_PER_SM_CLOCK = {(8, 0): 2048, (9, 0): 4096}
DECODE_THREADS = os.cpu_count() or 1
SOURCES = ("device", "host-pageable", "host-pinned", "png-decode")  # see input_fn


def measure_floor(model: torch.nn.Module, device: torch.device, size: int, smoke: bool) -> dict:
    """Work per image, the device's properties and its measured FP16 (CPU: FP32) matmul rate;
    "images_per_s" is the floor."""
    set_tf32(False)
    flop = flops_per_image(model, size, device)
    matmul = measure_matmul(device, 1024 if smoke else 8192, 3 if smoke else 10)
    return {
        "flop_per_image": flop,
        "flop_counted": "torch FlopCounterMode: convolutions and matmuls of teacher+student+map",
        "device": device_properties(device),
        "matmul": matmul,
        "images_per_s": matmul["tflops"] * 1e12 / flop,
    }


def flops_per_image(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """FLOP of one forward on one (1, size, size, 3) uint8 image, counted by torch.

    FlopCounterMode counts convolutions and matrix products (the map's resize and smoothing are
    matrix products); element-wise work is not counted, so the floor is a lower bound.
    """
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.zeros((1, size, size, 3), dtype=torch.uint8, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return float(counter.get_total_flops())


def device_properties(device: torch.device) -> dict:
    """Name, SM count and clocks; the spec FP16 dense peak where the architecture is known."""
    if device.type != "cuda":
        return {"name": "cpu", "note": "no tensor cores: the floor is an FP32 matmul on the CPU"}
    props = torch.cuda.get_device_properties(device)
    capability = (props.major, props.minor)
    info = {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "clock_khz_property": getattr(props, "clock_rate", None),  # absent in most torch builds
        **nvidia_smi_clocks(device.index or 0),
        "fp16_dense_flop_per_sm_clock": FP16_DENSE_FLOP_PER_SM_CLOCK.get(capability),
    }
    rate, clock = info["fp16_dense_flop_per_sm_clock"], info.get("max_sm_clock_mhz")
    info["spec_fp16_dense_tflops_at_max_clock"] = (
        props.multi_processor_count * clock * 1e6 * rate / 1e12 if rate and clock else None
    )
    return info


def nvidia_smi_clocks(index: int) -> dict:
    """Max and current SM clock in MHz from nvidia-smi; {} where it cannot be asked."""
    query = "clocks.max.sm,clocks.sm"
    argv = ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", f"--id={index}"]
    try:
        text = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
        max_sm, sm = (float(v) for v in text.strip().split(","))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {"nvidia_smi": "unavailable"}
    return {"max_sm_clock_mhz": max_sm, "sm_clock_mhz_now": sm}


def measure_matmul(device: torch.device, n: int, repeats: int, bursts: int = 5) -> dict:
    """Achieved rate of an n x n x n matmul: FP16 on CUDA (tensor cores), FP32 on the CPU.

    The fastest of `bursts` timed bursts of `repeats` products: the peak this device sustains.
    """
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = min(timed(lambda: a @ b, device, repeats, warmup=2) for _ in range(bursts))
    return {
        "kind": f"{device.type}-{str(dtype).removeprefix('torch.')}-matmul",
        "n": n,
        "repeats": repeats,
        "bursts": bursts,
        "tflops": 2 * n**3 / best / 1e12,
    }


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Seconds per call after `warmup` calls, synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def set_tf32(enabled: bool) -> dict:
    """Set both TF32 flags and return them as read back: cudnn's defaults to on, so "FP32"
    convolutions are TF32 unless a row turns it off. No effect on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def memory_format(t: torch.Tensor) -> str:
    """'channels_last', 'nchw', 'ambiguous' (a shape where both hold) or 'strided'."""
    if t.dim() != 4:
        return f"{t.dim()}-d"
    last, nchw = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    if last and nchw:
        return "ambiguous"
    return "channels_last" if last else "nchw" if nchw else "strided"


def first_conv_formats(model: torch.nn.Module, run: Callable[[], object]) -> dict:
    """Call `run` once and record the memory formats at the model's first Conv2d."""
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen: dict = {"weights_first_conv": memory_format(conv.weight)}

    def before(_module, args) -> None:
        seen.setdefault("act_first_conv", memory_format(args[0]))

    def after(_module, _args, output) -> None:
        seen.setdefault("out_first_conv", memory_format(output))

    handles = [conv.register_forward_pre_hook(before), conv.register_forward_hook(after)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def input_fn(source: str, images: np.ndarray, device: torch.device) -> tuple:
    """A call returning the batch on `device` the way `source` gets it there, and row notes."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "device":
        x = torch.from_numpy(images).to(device)
        return (lambda: x), {}
    pinned = source != "host-pageable" and device.type == "cuda"
    if source == "host-pinned" and not pinned:
        raise ValueError("pinned host memory needs a CUDA device")
    host = torch.from_numpy(images.copy())
    host = host.pin_memory() if pinned else host
    dst = torch.empty_like(host, device=device)
    notes = {"host_memory": "pinned" if pinned else "pageable", "copy": f"cpu->{device.type}"}
    if source != "png-decode":
        return (lambda: dst.copy_(host, non_blocking=pinned)), notes
    blobs = [png_bytes(img) for img in images]
    pool, staging, copied = decode_pool(), host.numpy(), None

    def decode(i: int) -> None:
        staging[i] = np.asarray(Image.open(io.BytesIO(blobs[i])).convert("RGB"))

    def load() -> torch.Tensor:
        nonlocal copied
        if copied is not None:
            copied.synchronize()  # the last copy out of `staging` is done: safe to overwrite
        list(pool.map(decode, range(len(blobs))))
        dst.copy_(host, non_blocking=pinned)
        copied = torch.cuda.Event() if pinned else None
        if copied is not None:
            copied.record()
        return dst

    return load, {**notes, "decode": "PIL + numpy", "decode_threads": DECODE_THREADS}


@lru_cache(maxsize=1)
def decode_pool() -> ThreadPoolExecutor:
    """One pool for every decoding row: PIL releases the GIL while it decodes."""
    return ThreadPoolExecutor(DECODE_THREADS)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
