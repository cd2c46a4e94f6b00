"""`--target trt`: what a build writes for TensorRT, and the plans it builds when asked to.

For every graph: the FP16 graph (build/precision.py) checked against TensorRT's rules, its
error against the FP32 graph emulated on the CPU, and ONNX Runtime's FP32 outputs on two
generated images (the reference every plan is checked against, here or in the serving pod).
Then `plans.json` and `build_plans.py` (build/plans.py) at the repository's root, and with
`--plans here` the plans themselves, built with this machine's TensorRT and GPU.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from dcam.build import plans, trt
from dcam.build.config import BuildConfig
from dcam.build.parity import onnxruntime_session, output_errors, parity_images
from dcam.build.precision import convert_fp16, fp16_emulation
from dcam.build.readiness import require_tensorrt_ready
from dcam.build.releases import release, require_matching_tensorrt, require_supported_tensorrt
from dcam.core.errors import BuildError

PARITY_PICK = (0, -1)  # plans are checked on the first good and the last defective image
TRITON_CONTAINER_ENV = "NVIDIA_TRITON_SERVER_VERSION"  # set in NVIDIA's Triton containers


def check_can_build(cfg: BuildConfig) -> None:
    """Refuse before any export when this machine cannot make plans `cfg` asks for."""
    if cfg.plans == "pod":
        return
    installed = trt.installed_tensorrt()
    if installed is not None:
        require_supported_tensorrt(installed)  # before anything else: the API must be ours
    missing = trt.missing_for_trt()
    if missing:
        raise BuildError(
            f"--target trt --plans here needs {' and '.join(missing)}; use --plans pod (the "
            f"serving image builds the plans on its GPU) or build in "
            f"{release(cfg.triton_release).image}"
        )
    require_matching_tensorrt(
        release(cfg.triton_release), installed or "", os.environ.get(TRITON_CONTAINER_ENV)
    )


def _images(size: int) -> np.ndarray:
    return parity_images(size)["generated"][list(PARITY_PICK)]


def prepare_model(
    name: str, onnx_path: Path, version: Path, io: dict, repo: Path, report: dict
) -> dict:
    """The FP16 graph, its checks and the reference outputs; returns its recipe entry."""
    entry = report["models"][name]
    require_tensorrt_ready(onnx_path, entry["tensorrt_problems"])
    fp16 = version / "model.fp16.onnx"
    entry["precision"] = convert_fp16(onnx_path, fp16)
    require_tensorrt_ready(fp16)
    image = io["inputs"][0]
    images = _images(image["dims"][0])
    images.tofile(repo / plans.PARITY_IMAGES)
    names = [o["name"] for o in io["outputs"]]
    feeds = {image["name"]: images}
    reference = onnxruntime_session(onnx_path).run(names, feeds)
    emulation = fp16_emulation(onnx_path).SerializeToString()
    emulated = onnxruntime_session(emulation).run(names, feeds)
    entry["fp16_emulated_vs_fp32"] = output_errors(reference, emulated, names)
    outputs = []
    for out_name, values in zip(names, reference, strict=True):
        path = version / f"reference.{out_name}.bin"
        np.asarray(values, "<f4").tofile(path)
        outputs.append({"name": out_name, "reference": str(path.relative_to(repo))})
    rel = version.relative_to(repo)
    return {
        "name": name,
        "onnx": str(rel / "model.onnx"),
        "onnx_fp16": str(rel / "model.fp16.onnx"),
        "plan": str(rel / "model.plan"),
        "input": image["name"],
        "outputs": outputs,
    }


def write_recipe(repo: Path, entries: list[dict], cfg: BuildConfig, size: list[int]) -> dict:
    """plans.json and build_plans.py at the repository's root (Triton ignores root files)."""
    shapes = [[b, *size, 3] for b in (cfg.min_batch_size, cfg.opt_batch_size, cfg.max_batch_size)]
    target = release(cfg.triton_release)
    recipe = {
        "triton_release": target.name,
        "image": target.image,
        "tensorrt_major": target.tensorrt_major,
        "hardware": cfg.hardware_compatibility,
        "workspace_mib": cfg.workspace_mib,
        "tolerance": cfg.fp16_tolerance,
        "parity": {"file": plans.PARITY_IMAGES, "shape": [len(PARITY_PICK), *size, 3]},
        "models": [{**e, "shapes": shapes} for e in entries],
    }
    (repo / plans.RECIPE).write_text(json.dumps(recipe, indent=1))
    shutil.copy2(plans.__file__, repo / plans.SCRIPT)
    return recipe


def build_here(repo: Path, recipe: dict, cfg: BuildConfig, report: dict) -> None:
    """Every plan with this machine's TensorRT, checked against the stored reference."""
    major = require_supported_tensorrt(trt.installed_tensorrt() or "")
    build = trt.build_engine_trtexec if cfg.builder == "trtexec" else trt.build_engine_python
    for model in recipe["models"]:
        graph = repo / (model["onnx_fp16"] if major == 11 else model["onnx"])
        shapes = {model["input"]: tuple(tuple(s) for s in model["shapes"])}
        build(
            trt.PlanSpec(
                graph,
                repo / model["plan"],
                shapes,
                cfg.workspace_mib,
                cfg.timing_cache_path(),
                cfg.hardware_compatibility,
            )
        )
    for name, errors in check_plans(repo, cfg.fp16_tolerance).items():
        report["models"][name]["tensorrt_vs_onnxruntime_fp32_cpu"] = errors
    report["gpu"] = trt.gpu_info(cfg.hardware_compatibility)
    report["triton_container"] = os.environ.get(TRITON_CONTAINER_ENV)


def check_plans(repo: Path, tolerance: float) -> dict[str, dict]:
    """Each plan on this GPU against ONNX Runtime's FP32 outputs stored at build time."""
    recipe = json.loads((repo / plans.RECIPE).read_text())
    images = np.fromfile(repo / plans.PARITY_IMAGES, np.uint8)
    images = images.reshape(recipe["parity"]["shape"])
    results, failures = {}, []
    for model in recipe["models"]:
        names = [o["name"] for o in model["outputs"]]
        got = trt.run_engine(repo / model["plan"], {model["input"]: images}, names)
        ref = [
            np.fromfile(repo / o["reference"], "<f4").reshape(g.shape)
            for o, g in zip(model["outputs"], got, strict=True)
        ]
        results[model["name"]] = errors = output_errors(ref, got, names)
        failures += [
            f"{model['name']} {out}: {e['max_rel']:.2e}"
            for out, e in errors.items()
            if e["max_rel"] > tolerance
        ]
    if failures:
        raise BuildError(
            f"plans differ from ONNX Runtime FP32 by more than {tolerance} (relative):\n"
            + "\n".join(failures)
        )
    return results
