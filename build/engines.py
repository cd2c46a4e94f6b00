"""`dcam-build engines`: a training run in, a Triton model repository out.

Reads RUN_DIR (`manifest.json`, `teacher.pt`, `student.pt`); writes OUT with the models, their
configs, the training manifest and `build_report.json` (the build id, versions, shapes, parity
errors, timings). Everything is assembled in a temporary folder beside OUT and renamed at the
end, so a failed build leaves nothing that looks valid.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from dcam.build import images, tensorrt_target, trt
from dcam.build import repository as repo_mod
from dcam.build.config import BuildConfig
from dcam.build.export import export_onnx, fused_net, load_feature_net
from dcam.build.parity import check_onnx
from dcam.build.readiness import tensorrt_problems
from dcam.build.releases import release
from dcam.build.report import REPORT_FILE
from dcam.build.simplify import onnx_io, simplify_onnx
from dcam.core.errors import BuildError, OutputExistsError
from dcam.core.files import write_json_atomic
from dcam.core.manifest import Manifest
from dcam.core.names import (
    ANOMALY_MAP,
    CALIBRATE_MODEL,
    ENSEMBLE_MODEL,
    FUSED_MODEL,
    POSTPROCESS_MODEL,
    RAW_SCORE,
    ROLES,
)
from dcam.core.versions import package_versions
from dcam.serve.compat import read_configs


def resolve_target(cfg: BuildConfig) -> str:
    """auto picks trt only where plans can be built here; an explicit trt that cannot build
    what it was asked for is refused before any export."""
    if cfg.target == "auto":
        return "cpu" if trt.missing_for_trt() else "trt"
    if cfg.target == "trt":
        tensorrt_target.check_can_build(cfg)
    return cfg.target


def _prepare_out(out: Path, force: bool) -> Path:
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; pass --force to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create {out.parent}: {exc}") from exc
    if not os.access(out.parent, os.W_OK):
        raise BuildError(f"{out.parent} is not writable")
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _export_checked(
    net,
    name: str,
    outputs: list[str],
    work: Path,
    manifest: Manifest,
    cfg: BuildConfig,
    report: dict,
) -> Path:
    """Export, simplify, check against PyTorch; returns the simplified ONNX path."""
    start = time.perf_counter()
    size = list(manifest.input_size)
    raw = export_onnx(net, work / f"{name}.raw.onnx", outputs, size, cfg.opset)
    simple = work / f"{name}.onnx"
    nodes = simplify_onnx(raw, simple)
    parity = check_onnx(net, simple, outputs, size[0], cfg.tolerance)
    report["models"][name] = {
        "onnx_nodes": nodes,
        "onnxruntime_vs_pytorch": parity,
        "io": onnx_io(simple),
        "seconds": time.perf_counter() - start,
    }
    return simple


def _place_engine(
    onnx_path: Path, version: Path, target: str, report: dict, name: str, plans: list
) -> None:
    """The ONNX graph beside the config; for TensorRT also its FP16 graph and references.

    Every graph is checked against TensorRT's rules and the result recorded; a TensorRT build
    refuses a graph that breaks them before the parser sees it.
    """
    shutil.copy2(onnx_path, version / "model.onnx")
    report["models"][name]["tensorrt_problems"] = tensorrt_problems(onnx_path)
    if target == "trt":
        io = report["models"][name]["io"]
        repo = version.parents[1]
        plans.append(tensorrt_target.prepare_model(name, onnx_path, version, io, repo, report))


def _serving_params(cfg: BuildConfig, target: str, sessions: int, extra: dict | None = None):
    """ONNX Runtime's threads per session: our runner's parameter on the Python backend, the
    ONNX Runtime backend's own `intra_op_thread_count` on the native one."""
    threads = str(cfg.session_threads(sessions))
    key = {"cpu": "intra_op_threads", "onnx": "intra_op_thread_count"}.get(target)
    params = {key: threads} if key and not cfg.on_gpu(target) else {}
    return {**params, **(extra or {})}


def _runner(target: str) -> str | None:
    """The Python-backend template serving an ONNX graph on the CPU; TensorRT needs none."""
    return "onnx_runner.py" if target == "cpu" else None


def _write_ensemble(manifest, run_dir, cfg, target, work, tmp, report, plans) -> None:
    build_id = report["build_id"]
    for role in ROLES:
        net = load_feature_net(run_dir, manifest, role)
        onnx_path = _export_checked(net, role, manifest.levels, work, manifest, cfg, report)
        io = report["models"][role]["io"]
        config = repo_mod.model_config(role, io, cfg, target, _serving_params(cfg, target, 2))
        version = repo_mod.write_model(tmp, config, _runner(target))
        _place_engine(onnx_path, version, target, report, role, plans)
    teacher_io = report["models"]["teacher"]["io"]
    post_io = repo_mod.postprocess_io(manifest, teacher_io)
    params = repo_mod.postprocess_params(
        manifest, teacher_io, cfg.on_gpu(target), cfg.drift_spec(), build_id
    )
    post = repo_mod.model_config(POSTPROCESS_MODEL, post_io, cfg, target, params, python=True)
    repo_mod.write_model(tmp, post, "postprocess.py")
    image = teacher_io["inputs"][0]
    ensemble = repo_mod.ensemble_config(
        ENSEMBLE_MODEL, image, teacher_io, post_io, cfg.max_batch_size
    )
    repo_mod.write_model(tmp, repo_mod.publish_scoring(ensemble, manifest, build_id))


def _write_fused(manifest, run_dir, cfg, target, work, tmp, report, plans) -> None:
    build_id = report["build_id"]
    net = fused_net(run_dir, manifest)
    outputs = [ANOMALY_MAP, RAW_SCORE]
    onnx_path = _export_checked(net, FUSED_MODEL, outputs, work, manifest, cfg, report)
    io = report["models"][FUSED_MODEL]["io"]
    config = repo_mod.model_config(FUSED_MODEL, io, cfg, target, _serving_params(cfg, target, 1))
    version = repo_mod.write_model(tmp, config, _runner(target))
    _place_engine(onnx_path, version, target, report, FUSED_MODEL, plans)
    calibrate = repo_mod.model_config(
        CALIBRATE_MODEL,
        repo_mod.calibrate_io(),
        cfg,
        "cpu",  # a few numbers per image: the CPU, whatever the target
        repo_mod.calibrate_params(manifest, cfg.drift_spec(), build_id),
        python=True,
    )
    repo_mod.write_model(tmp, calibrate, "calibrate.py")
    ensemble = repo_mod.fused_ensemble_config(ENSEMBLE_MODEL, io, cfg.max_batch_size)
    repo_mod.write_model(tmp, repo_mod.publish_scoring(ensemble, manifest, build_id))


def build_repository(cfg: BuildConfig) -> dict:
    """Run the whole build; returns the build report also written to OUT/build_report.json."""
    start = time.perf_counter()
    run_dir, out = Path(cfg.run_dir), Path(cfg.out)
    manifest = Manifest.read(run_dir)
    target = resolve_target(cfg)
    layout = cfg.resolved_layout(target)
    tmp = _prepare_out(out, cfg.force)
    report: dict = {
        "config": cfg.to_dict(),
        "target": target,
        "layout": layout,
        # Names this repository: a calibration version folder must name the same build
        # (core/served_calibration.py), and clients tag rows `<build_id>/<version>`.
        "build_id": secrets.token_hex(6),
        "triton_release": cfg.triton_release,
        "run_dir": str(run_dir.resolve()),
        "models": {},
        "versions": _versions(),
    }
    plans: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dcam-onnx-") as work:
            writer = _write_fused if layout == "fused" else _write_ensemble
            writer(manifest, run_dir, cfg, target, Path(work), tmp, report, plans)
        report["serving_image"] = _serving_image(tmp, cfg, target)
        if target == "trt":
            recipe = tensorrt_target.write_recipe(tmp, plans, cfg, list(manifest.input_size))
            report["plans"] = cfg.plans
            if cfg.plans == "here":
                tensorrt_target.build_here(tmp, recipe, cfg, report)
        report["seconds"] = time.perf_counter() - start
        serving = {k: report[k] for k in ("target", "layout", "triton_release")}
        serving["image"] = report["serving_image"]["image"]
        if "gpu" in report:  # plans built here; in the pod, build_plans.py adds its own
            serving["tensorrt"] = report["gpu"]
        Manifest.from_dict({**manifest.data, "serving": serving}).write(tmp)
        write_json_atomic(tmp / REPORT_FILE, report)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _serving_image(repo: Path, cfg: BuildConfig, target: str) -> dict:
    """The stock Triton image that serves these configs, or what it lacks (build/images.py)."""
    configs = read_configs(repo)
    variant = images.stock_variant(configs)
    if target == "cpu":
        return {"image": "the embedded tritonserver (dcam-serve)", "variant": None}
    base = release(cfg.triton_release).image.removesuffix("-py3")
    if variant is None:
        return {
            "image": f"derived from {base}-py3 with {images.DERIVED_IMAGE}",
            "variant": None,
            "unmet": images.unmet(configs, "py3"),
        }
    return {"image": f"{base}-{variant}", "variant": variant}


def _versions() -> dict:
    import torch  # loaded already by export.py

    return {
        **package_versions(
            *("torch", "torchvision", "numpy", "pillow"),
            *("onnx", "onnxruntime", "onnxsim", "tritonclient", "nvidia-modelopt"),
        ),
        # torch's own string keeps the build's local label (e.g. +cu130) that its metadata drops.
        "torch": torch.__version__,
    }


def worst_errors(report: dict) -> dict[str, float]:
    """The largest relative ONNX Runtime vs PyTorch error per model, for a one-line summary."""
    return {
        name: max(
            e["max_rel"] for kind in m["onnxruntime_vs_pytorch"].values() for e in kind.values()
        )
        for name, m in report["models"].items()
    }
