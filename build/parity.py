"""Check each conversion numerically against the stage before it, and record the error.

Relative error is max |candidate - reference| / max |reference| per output: elementwise ratios
explode on features that are near zero, the scale of the output is what a tolerance means.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dcam.core.errors import BuildError
from dcam.core.names import IMAGE
from dcam.datasets.synthetic import CATEGORIES, render_defect, render_good


def parity_images(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random bytes and generated production-line images (good and defective), UINT8 NHWC."""
    rng = np.random.default_rng(seed)
    generated = [render_good(c, size, rng) for c in CATEGORIES[:3]]
    generated += [render_defect(c, "stain", size, rng)[0] for c in CATEGORIES[:2]]
    return {
        "random": rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8),
        "generated": np.stack(generated),
    }


def output_errors(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    errors = {}
    for name, ref, got in zip(names, reference, candidate, strict=True):
        ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        max_abs = float(np.abs(ref64 - got64).max()) if ref64.size else 0.0
        scale = float(np.abs(ref64).max()) if ref64.size else 0.0
        errors[name] = {"max_abs": max_abs, "max_rel": max_abs / scale if scale else max_abs}
    return errors


def onnxruntime_session(model: Path | bytes, threads: int = 0):
    """An ONNX Runtime session on the CPU (a graph's path, or its serialised bytes): the
    reference every later stage is checked against, here and (as stored outputs) where the
    plans are built."""
    import onnxruntime as ort  # deferred: the build extra is optional

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def check_onnx(
    net: torch.nn.Module, onnx_path: Path, names: Sequence[str], size: int, tolerance: float
) -> dict:
    """ONNX Runtime vs PyTorch on random and generated images; raises past `tolerance`."""
    session = onnxruntime_session(onnx_path)
    report: dict = {}
    for kind, images in parity_images(size).items():
        with torch.no_grad():
            ref = [t.numpy() for t in net(torch.from_numpy(images))]
        got = session.run(list(names), {IMAGE: images})
        errors = output_errors(ref, got, names)
        report[kind] = errors
        worst = max(errors.items(), key=lambda kv: kv[1]["max_rel"])
        if worst[1]["max_rel"] > tolerance:
            raise BuildError(
                f"{onnx_path.name}: ONNX Runtime differs from PyTorch on {kind} "
                f"images, output {worst[0]}: relative error {worst[1]['max_rel']:.2e}"
                f" > tolerance {tolerance:.0e}"
            )
    return report
