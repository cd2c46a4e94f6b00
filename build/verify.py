"""`dcam-build verify`: serve a built repository with the real tritonserver and compare it with
the in-process PyTorch reference (same weights, same scoring rule) over HTTP and gRPC.

A TensorRT repository cannot be served here: the embedded tritonserver has no TensorRT backend.
For it, verify compares each engine with ONNX Runtime FP32 on the GPU instead (needs TensorRT
and a CUDA GPU) and says so. Reads the repository's `build_report.json` and `manifest.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dcam.build import plans, trt
from dcam.build.export import load_feature_net
from dcam.build.parity import output_errors, parity_images
from dcam.build.report import read_build_report
from dcam.build.tensorrt_target import check_plans
from dcam.core import scoring
from dcam.core.errors import BuildError
from dcam.core.manifest import Manifest
from dcam.core.names import ENSEMBLE_MODEL, IMAGE, OUTPUTS
from dcam.core.scoring import request_parameters
from dcam.serve.server import ServerConfig, TritonServer


def reference_outputs(
    run_dir: Path, manifest: Manifest, images: np.ndarray, category: str | None = None
) -> list[np.ndarray]:
    """What the served `dcam` model must return, computed in this process, in `OUTPUTS` order
    (with `category`'s calibration when a request names that product)."""
    teacher = load_feature_net(run_dir, manifest, "teacher")
    student = load_feature_net(run_dir, manifest, "student")
    x = torch.from_numpy(images)
    with torch.no_grad():
        t_feats = [f.numpy() for f in teacher(x)]
        s_feats = [f.numpy() for f in student(x)]
    scored = scoring.score(manifest.scoring, t_feats, s_feats, category=category)
    return [scored.maps, scored.normalised[:, None], scored.decisions[:, None]]


def infer(
    protocol: str,
    url: str,
    images: np.ndarray,
    model: str = ENSEMBLE_MODEL,
    threshold: float | None = None,
    category: str | None = None,
) -> list[np.ndarray]:
    """One synchronous request with tritonclient; the outputs in `OUTPUTS` order."""
    if protocol == "http":
        import tritonclient.http as client
    else:
        import tritonclient.grpc as client
    conn = client.InferenceServerClient(url)
    image = client.InferInput(IMAGE, list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    params = request_parameters(threshold, category)
    result = conn.infer(model, [image], parameters=params or None)
    return [result.as_numpy(name) for name in OUTPUTS]


def _compare(ref: list[np.ndarray], got: list[np.ndarray], threshold: float) -> dict:
    errors = output_errors(ref[:2], got[:2], OUTPUTS[:2])
    # A decision may flip only for a score within rounding distance of the threshold.
    clear = np.abs(ref[1] - threshold) > 1e-3
    errors[OUTPUTS[2]] = {"mismatches": int((ref[2] != got[2])[clear].sum())}
    return errors


def verify_engines(repo: Path, build: dict) -> dict:
    """Each TensorRT plan on this GPU against the ONNX Runtime FP32 outputs stored at build
    time, within the build's tolerance."""
    missing = trt.missing_for_trt()
    if missing or not (Path(repo) / plans.RECIPE).is_file():
        raise BuildError(
            f"{repo} holds TensorRT graphs; the embedded tritonserver has no TensorRT "
            "backend, so verify runs each plan against the ONNX Runtime FP32 outputs stored "
            f"with the build instead, which needs {' and '.join(missing) or 'the plans'}. "
            f"In the serving image, {plans.SCRIPT} builds the plans and makes the same check; "
            "serve the repository in the Triton container of its release for an end-to-end check."
        )
    if not all((Path(repo) / m["plan"]).is_file() for m in _recipe(repo)["models"]):
        raise BuildError(f"{repo} was built with --plans pod: run {plans.SCRIPT} first")
    results = check_plans(Path(repo), build["config"]["fp16_tolerance"])
    checked = "TensorRT plans match ONNX Runtime FP32 outputs stored at build time"
    return {"repository": str(repo), "checked": checked, "results": results, "ok": True}


def _recipe(repo: Path) -> dict:
    return json.loads((Path(repo) / plans.RECIPE).read_text())


def verify_repository(
    repo: Path,
    run_dir: Path | None = None,
    tolerance: float = 1e-4,
    protocols: tuple[str, ...] = ("http", "grpc"),
) -> dict:
    """Serve `repo`, send a batch of 1 and one larger than the preferred size, compare.

    A TensorRT repository is checked engine by engine on the GPU instead (`verify_engines`).
    """
    build = read_build_report(repo)
    if build["target"] == "trt":
        return verify_engines(repo, build)
    run_dir = Path(run_dir or build["run_dir"])
    manifest = Manifest.read(Path(repo))
    size = manifest.input_size[0]
    big = min(build["config"]["opt_batch_size"] + 2, build["config"]["max_batch_size"])
    images = np.concatenate(
        [parity_images(size, seed)["generated"] for seed in range(big // 5 + 1)]
    )
    batches = {"batch_1": images[:1], f"batch_{big}": images[:big]}
    threshold = manifest.scoring.calibration.threshold
    checked = "served maps, scores and decisions match the in-process reference"
    report: dict = {
        "repository": str(repo),
        "run_dir": str(run_dir),
        "checked": checked,
        "results": {},
    }
    with TritonServer(ServerConfig(Path(repo))) as server:
        urls = {"http": server.http_url, "grpc": server.grpc_url}
        for name, batch in batches.items():
            ref = reference_outputs(run_dir, manifest, batch)
            for protocol in protocols:
                got = infer(protocol, urls[protocol], batch)
                report["results"][f"{protocol}/{name}"] = _compare(ref, got, threshold)
    failures = [
        f"{key} {out}: {err}"
        for key, outs in report["results"].items()
        for out, err in outs.items()
        if err.get("max_rel", 0.0) > tolerance or err.get("mismatches", 0)
    ]
    report["ok"] = not failures
    if failures:
        raise BuildError(
            "served outputs differ from the in-process reference:\n" + "\n".join(failures)
        )
    return report
