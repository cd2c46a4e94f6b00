"""Write Triton model configurations and lay out the model repository.

Every value comes from the manifest, the exported graphs' actual I/O and the build flags; nothing
is hand-edited. The Python-backend sources come from the `dcam.model_repository` templates and
the anomaly-map maths is copied beside the post-processing model, so the repository also runs in
a stock Triton container without dcam installed.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from dcam.build.config import BuildConfig
from dcam.training import anomaly_map

TRITON_TYPES = {
    "uint8": "TYPE_UINT8",
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bool": "TYPE_BOOL",
    "int64": "TYPE_INT64",
}
POSTPROCESS_OUTPUTS = [
    ("anomaly_map", "float32", None),
    ("score", "float32", [1]),
    ("is_anomalous", "bool", [1]),
]


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensors(kind: str, tensors: list[dict]) -> str:
    items = ",\n".join(
        f'  {{\n    name: "{t["name"]}"\n    data_type: {TRITON_TYPES[t["dtype"]]}\n'
        f"    dims: {_dims(t['dims'])}\n  }}"
        for t in tensors
    )
    return f"{kind} [\n{items}\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in params.items()
    )


def _batching(cfg: BuildConfig) -> str:
    preferred = sorted({cfg.opt_batch_size, cfg.max_batch_size})
    return (
        f"dynamic_batching {{\n  preferred_batch_size: {_dims(preferred)}\n"
        f"  max_queue_delay_microseconds: {cfg.queue_delay_us}\n}}\n"
    )


def _warmup(image: dict) -> str:
    return (
        f'model_warmup [\n  {{\n    name: "warmup_batch_1"\n    batch_size: 1\n'
        f'    inputs {{ key: "{image["name"]}" value: {{ data_type: '
        f"{TRITON_TYPES[image['dtype']]} dims: {_dims(image['dims'])} random_data: true }} }}"
        f"\n  }}\n]\n"
    )


def model_config(
    name: str,
    io: dict,
    cfg: BuildConfig,
    target: str,
    params: dict[str, str] | None = None,
    python: bool | None = None,
) -> str:
    """config.pbtxt of one served model: a TensorRT plan on GPU, else the Python backend."""
    python = target == "cpu" if python is None else python
    kind = "KIND_GPU" if target == "trt" else "KIND_CPU"
    head = f'name: "{name}"\n'
    head += (
        'backend: "python"\n'
        if python
        else ('platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n')
    )
    text = head + f"max_batch_size: {cfg.max_batch_size}\n"
    text += _tensors("input", io["inputs"]) + _tensors("output", io["outputs"])
    text += _batching(cfg)
    text += f"instance_group [ {{ kind: {kind} count: {cfg.instances} }} ]\n"
    text += _parameters(params or {})
    if io["inputs"][0]["dtype"] == "uint8":
        text += _warmup(io["inputs"][0])
    return text


def postprocess_io(manifest: dict, teacher_io: dict) -> dict:
    """Inputs: each level of teacher and student (from the graph); outputs: map, score, flag."""
    inputs = [
        {**o, "name": f"{role}_{o['name']}"}
        for role in ("teacher", "student")
        for o in teacher_io["outputs"]
    ]
    size = list(manifest["input"]["size"])
    outputs = [{"name": n, "dtype": t, "dims": d or size} for n, t, d in POSTPROCESS_OUTPUTS]
    return {"inputs": inputs, "outputs": outputs}


def postprocess_params(manifest: dict, teacher_io: dict, target: str) -> dict[str, str]:
    levels = [o["name"] for o in teacher_io["outputs"]]
    glob = manifest["normalization"]["global"]
    height, width = manifest["input"]["size"]
    return {
        "teacher_inputs": ",".join(f"teacher_{n}" for n in levels),
        "student_inputs": ",".join(f"student_{n}" for n in levels),
        "height": str(height),
        "width": str(width),
        "combine": manifest["anomaly_map"]["combine"],
        "sigma": repr(float(manifest["anomaly_map"]["gaussian_sigma"])),
        "score_mean": repr(glob["mean"]),
        "score_std": repr(glob["std"]),
        "threshold": repr(glob["threshold"]),
        # One BLAS thread: the maths is small, and spinning BLAS threads beside the busy
        # teacher/student instances slowed it 50x on a 2-core machine (benchmarks/README.md).
        "blas_threads": "1",
        # On GPU the features stay on the device (DLPack); on CPU numpy needs host tensors.
        "FORCE_CPU_ONLY_INPUT_TENSORS": "yes" if target == "cpu" else "no",
    }


def ensemble_config(
    name: str, image: dict, teacher_io: dict, post_io: dict, max_batch_size: int
) -> str:
    """`IMAGE -> teacher || student -> postprocess` as a Triton ensemble."""

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
        maps = "".join(f'    input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in inputs.items())
        maps += "".join(
            f'    output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in outputs.items()
        )
        return f'  {{\n    model_name: "{model}"\n    model_version: -1\n{maps}  }}'

    levels = [o["name"] for o in teacher_io["outputs"]]
    steps = [
        step(role, {image["name"]: image["name"]}, {n: f"{role}_{n}" for n in levels})
        for role in ("teacher", "student")
    ]
    steps.append(
        step(
            "postprocess",
            {t["name"]: t["name"] for t in post_io["inputs"]},
            {t["name"]: t["name"] for t in post_io["outputs"]},
        )
    )
    text = f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
    text += _tensors("input", [image]) + _tensors("output", post_io["outputs"])
    return text + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"


def template(name: str) -> str:
    return resources.files("dcam.model_repository").joinpath("templates", name).read_text()


def write_model(repo: Path, name: str, config: str, sources: dict[str, str] | None = None) -> Path:
    """`<repo>/<name>/config.pbtxt` and version folder 1 (ensembles need it too, empty)."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    for filename, text in (sources or {}).items():
        (version / filename).write_text(text)
    return version


def write_postprocess(repo: Path, config: str) -> Path:
    version = write_model(repo, "postprocess", config, {"model.py": template("postprocess.py")})
    shutil.copy2(anomaly_map.__file__, version / "anomaly_map.py")
    return version
