"""Write Triton model configurations and lay out the model repository.

Each config.pbtxt is a `ModelConfig` message from Triton's own protobuf (shipped in tritonclient)
written with protobuf's text_format, so field names and enums are checked by construction. Every
value comes from the manifest, the exported graphs' actual I/O and the build flags. The
Python-backend sources come from the `dcam.model_repository` templates, with the scoring rule
(`anomaly_map.py`, `scoring.py`), `batching.py` and `served_calibration.py` copied beside them, so
the repository also runs in a stock Triton container without dcam installed. Each build has a
random `build_id`, a parameter of the deciding model and of `dcam`: a calibration version folder
names the build it belongs to (core/served_calibration.py).
"""

from __future__ import annotations

import compileall
import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dcam.build.config import BuildConfig
from dcam.core import anomaly_map, batching, calibration, drift, scoring, served_calibration
from dcam.core.drift import DRIFT_PARAMETER, DriftSpec
from dcam.core.errors import BuildError
from dcam.core.manifest import Manifest
from dcam.core.names import (
    ANOMALY_MAP,
    CALIBRATE_MODEL,
    CALIBRATION_VERSION,
    FUSED_MODEL,
    IS_ANOMALOUS,
    POSTPROCESS_MODEL,
    RAW_SCORE,
    ROLES,
    SCORE,
    feature_name,
)
from dcam.core.scoring import SCORING_PARAMETER
from dcam.core.served_calibration import BUILD_ID_PARAMETER

DATA_TYPES = {
    "uint8": mc.TYPE_UINT8,
    "float32": mc.TYPE_FP32,
    "float16": mc.TYPE_FP16,
    "bool": mc.TYPE_BOOL,
    "int64": mc.TYPE_INT64,
}
POSTPROCESS_OUTPUTS = [
    (ANOMALY_MAP, "float32", None),
    (SCORE, "float32", [1]),
    (IS_ANOMALOUS, "bool", [1]),
    (CALIBRATION_VERSION, "int64", [1]),  # the deciding model's version: which calibration
]
# Copied beside every Python-backend model: the scoring rule and the calibrator that owns the
# decision, the request batching, the drift rule, the calibration a version folder serves; the
# adapter that publishes line metrics and the steps every Triton model shares (parameters, spec,
# one response per request).
SUPPORT_MODULES = (anomaly_map, calibration, scoring, batching, drift, served_calibration)
SUPPORT_TEMPLATES = ("line_metrics.py", "triton_model.py")


def _tensors(cls: type, tensors: list[dict]) -> list:
    return [cls(name=t["name"], data_type=DATA_TYPES[t["dtype"]], dims=t["dims"]) for t in tensors]


def _warmup(config: mc.ModelConfig, inputs: list[dict], cfg: BuildConfig) -> None:
    """Batches of 1, the preferred and the largest size at load: the first real request does not
    pay for lazy set-up, and memory reaches its high-water mark before serving. ONNX Runtime's
    arena and numpy's buffers grow to the largest batch met; warmed at batch 1 only, the soak
    saw them step up at random times hours in, whenever the batcher first merged a full batch.
    Images are random; features and scores zeros."""
    for size in sorted({1, cfg.opt_batch_size, cfg.max_batch_size}):
        warmup = config.model_warmup.add(name=f"warmup_batch_{size}", batch_size=size)
        for tensor in inputs:
            data = warmup.inputs[tensor["name"]]
            data.data_type = DATA_TYPES[tensor["dtype"]]
            data.dims.extend(tensor["dims"])
            if tensor["dtype"] == "uint8":
                data.random_data = True
            else:
                data.zero_data = True


def model_config(
    name: str,
    io: dict,
    cfg: BuildConfig,
    target: str,
    params: Mapping[str, str] | None = None,
    python: bool | None = None,
) -> mc.ModelConfig:
    """One served model: a TensorRT plan, an ONNX graph for Triton's ONNX Runtime backend, or
    the Python backend."""
    python = target == "cpu" if python is None else python
    config = mc.ModelConfig(name=name, max_batch_size=cfg.max_batch_size)
    if python:
        config.backend = "python"
    elif target == "onnx":
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
        if cfg.onnx_accelerator == "tensorrt":
            _tensorrt_accelerator(config, cfg)
    else:
        config.platform = "tensorrt_plan"
        config.default_model_filename = "model.plan"
    config.input.extend(_tensors(mc.ModelInput, io["inputs"]))
    config.output.extend(_tensors(mc.ModelOutput, io["outputs"]))
    config.dynamic_batching.preferred_batch_size.extend(
        sorted({cfg.opt_batch_size, cfg.max_batch_size})
    )
    config.dynamic_batching.max_queue_delay_microseconds = cfg.queue_delay_us
    kind = mc.ModelInstanceGroup.KIND_GPU if cfg.on_gpu(target) else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=cfg.instances)
    for key, value in (params or {}).items():
        config.parameters[key].string_value = value
    _warmup(config, io["inputs"], cfg)
    if io["inputs"][0]["dtype"] == "uint8":
        _queue_policy(config, cfg.queue_timeout(target), cfg.queue_size(target))
    return config


def _tensorrt_accelerator(config: mc.ModelConfig, cfg: BuildConfig) -> None:
    """ONNX Runtime's TensorRT execution provider in FP16, engines cached across restarts
    (onnxruntime_backend README, "TensorRT Optimization"). Engines are built when the model
    loads: minutes on the first start of a pod, seconds from the cache after."""
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name="tensorrt"
    )
    accelerator.parameters.update(
        {
            "precision_mode": "FP16",
            "max_workspace_size_bytes": str(cfg.workspace_mib << 20),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": cfg.onnx_engine_cache,
        }
    )


def _queue_policy(config: mc.ModelConfig, timeout_ms: int, size: int) -> None:
    """Bound the queue where requests enter (the image-taking models): later steps only ever
    see what the first one admitted, and rejecting there wastes no computation."""
    if not (timeout_ms or size):
        return
    policy = config.dynamic_batching.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = timeout_ms * 1000
    policy.allow_timeout_override = True  # a request's own `timeout` may shorten or lengthen it
    policy.max_queue_size = size


def postprocess_io(manifest: Manifest, teacher_io: dict) -> dict:
    """Inputs: each level of teacher and student (from the graph); outputs: map, score, flag."""
    inputs = [
        {**o, "name": feature_name(role, o["name"])}
        for role in ROLES
        for o in teacher_io["outputs"]
    ]
    size = list(manifest.input_size)
    outputs = [{"name": n, "dtype": t, "dims": d or size} for n, t, d in POSTPROCESS_OUTPUTS]
    return {"inputs": inputs, "outputs": outputs}


def postprocess_params(
    manifest: Manifest,
    teacher_io: dict,
    on_gpu: bool,
    drift_spec: DriftSpec | None,
    build_id: str,
) -> dict[str, str]:
    """What the post-processing model reads in `initialize`: tensor roles and the scoring rule."""
    levels = [o["name"] for o in teacher_io["outputs"]]
    return {
        "teacher_inputs": ",".join(feature_name("teacher", n) for n in levels),
        "student_inputs": ",".join(feature_name("student", n) for n in levels),
        **calibrate_params(manifest, drift_spec, build_id),
        "map_output": ANOMALY_MAP,
        # One BLAS thread: the maths is small, and spinning BLAS threads beside the busy
        # teacher/student instances slowed it 50x on a 2-core machine (benchmarks/README.md).
        "blas_threads": "1",
        # On GPU the features stay on the device (DLPack); on CPU numpy needs host tensors.
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no" if on_gpu else "yes",
    }


def calibrate_io() -> dict:
    """The fused layout's calibration step: the raw score in; score, decision and the
    calibration version out."""
    return {
        "inputs": [{"name": RAW_SCORE, "dtype": "float32", "dims": [1]}],
        "outputs": [
            {"name": SCORE, "dtype": "float32", "dims": [1]},
            {"name": IS_ANOMALOUS, "dtype": "bool", "dims": [1]},
            {"name": CALIBRATION_VERSION, "dtype": "int64", "dims": [1]},
        ],
    }


def calibrate_params(
    manifest: Manifest, drift_spec: DriftSpec | None, build_id: str
) -> dict[str, str]:
    """What every model applying the scoring rule reads: the record, the build it belongs to
    (a version folder's calibration.json must name it), its output names and, with line metrics
    on, the drift rule."""
    params = {
        SCORING_PARAMETER: manifest.scoring.to_json(),
        BUILD_ID_PARAMETER: build_id,
        "score_output": SCORE,
        "decision_output": IS_ANOMALOUS,
        "version_output": CALIBRATION_VERSION,
    }
    if drift_spec is not None:
        params[DRIFT_PARAMETER] = drift_spec.to_json()
    return params


def fused_ensemble_config(name: str, fused_io: dict, max_batch_size: int) -> mc.ModelConfig:
    """`IMAGE -> fused (map, raw score) -> calibrate (score, decision, calibration version)` as
    a Triton ensemble."""
    image, (anomaly_map, raw) = fused_io["inputs"][0], fused_io["outputs"]
    calibrated = calibrate_io()["outputs"]
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    config.input.extend(_tensors(mc.ModelInput, [image]))
    config.output.extend(_tensors(mc.ModelOutput, [anomaly_map, *calibrated]))
    fused = config.ensemble_scheduling.step.add(model_name=FUSED_MODEL, model_version=-1)
    fused.input_map[image["name"]] = image["name"]
    fused.output_map.update({t["name"]: t["name"] for t in fused_io["outputs"]})
    step = config.ensemble_scheduling.step.add(model_name=CALIBRATE_MODEL, model_version=-1)
    step.input_map[raw["name"]] = raw["name"]
    step.output_map.update({t["name"]: t["name"] for t in calibrated})
    return config


def ensemble_config(
    name: str, image: dict, teacher_io: dict, post_io: dict, max_batch_size: int
) -> mc.ModelConfig:
    """`IMAGE -> teacher || student -> postprocess` as a Triton ensemble."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    config.input.extend(_tensors(mc.ModelInput, [image]))
    config.output.extend(_tensors(mc.ModelOutput, post_io["outputs"]))
    levels = [o["name"] for o in teacher_io["outputs"]]
    for role in ROLES:
        step = config.ensemble_scheduling.step.add(model_name=role, model_version=-1)
        step.input_map[image["name"]] = image["name"]
        step.output_map.update({n: feature_name(role, n) for n in levels})
    post = config.ensemble_scheduling.step.add(model_name=POSTPROCESS_MODEL, model_version=-1)
    post.input_map.update({t["name"]: t["name"] for t in post_io["inputs"]})
    post.output_map.update({t["name"]: t["name"] for t in post_io["outputs"]})
    return config


def publish_scoring(config: mc.ModelConfig, manifest: Manifest, build_id: str) -> mc.ModelConfig:
    """The scoring record and the build id as parameters of the model clients call, so a client
    can read each product's calibration (for heatmaps on one scale per product) from the server
    itself, and name each result's calibration `<build_id>/<version>`."""
    config.parameters[SCORING_PARAMETER].string_value = manifest.scoring.to_json()
    config.parameters[BUILD_ID_PARAMETER].string_value = build_id
    return config


def template(name: str) -> str:
    return resources.files("dcam.model_repository").joinpath("templates", name).read_text()


def write_model(repo: Path, config: mc.ModelConfig, template_name: str | None = None) -> Path:
    """`<repo>/<name>/config.pbtxt` and version folder 1 (ensembles need it too, empty).

    With a template, the version folder gets it as model.py plus the support modules.
    """
    version = repo / config.name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / config.name / "config.pbtxt").write_text(text_format.MessageToString(config))
    if template_name is not None:
        (version / "model.py").write_text(template(template_name))
        for module in SUPPORT_MODULES:
            shutil.copy2(module.__file__, version / Path(module.__file__).name)
        for name in SUPPORT_TEMPLATES:
            (version / name).write_text(template(name))
        _compile(version)
    return version


def _compile(version: Path) -> None:
    """Byte-compile the folder's Python now. A Python-backend stub that finds no valid
    `__pycache__` writes one into the version folder while loading (PYTHONDONTWRITEBYTECODE does
    not reach its embedded interpreter), and a server polling its repository takes that write
    for a changed model and loads every Python model a second time, seconds after start.
    Compiled here with the build's interpreter, the embedded server's stub (the same Python)
    writes nothing; a container with another Python writes its own once."""
    if not compileall.compile_dir(version, quiet=1, maxlevels=0):
        raise BuildError(f"{version}: the Python model files do not compile")
