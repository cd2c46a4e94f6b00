"""`dcam-build verify`: serve a built repository with the real tritonserver and compare it with
the in-process PyTorch reference (same weights, same anomaly-map maths) over HTTP and gRPC.

Reads the repository's `build_report.json` (to find the training run) and `manifest.json`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcam.build.engines import read_build_report
from dcam.build.errors import BuildError
from dcam.build.export import load_feature_net
from dcam.build.parity import output_errors, parity_images
from dcam.build.server import ServerConfig, TritonServer
from dcam.training import anomaly_map as amap
from dcam.training.manifest import read_manifest

OUTPUTS = ("anomaly_map", "score", "is_anomalous")


def reference_outputs(run_dir: Path, manifest: dict, images: np.ndarray) -> list[np.ndarray]:
    """What the served `dcam` model must return, computed in this process."""
    teacher = load_feature_net(run_dir, manifest, "teacher")
    student = load_feature_net(run_dir, manifest, "student")
    x = torch.from_numpy(images)
    with torch.no_grad():
        t_feats = [f.numpy() for f in teacher(x)]
        s_feats = [f.numpy() for f in student(x)]
    spec = manifest["anomaly_map"]
    maps = amap.anomaly_map(
        t_feats, s_feats, tuple(manifest["input"]["size"]), spec["combine"], spec["gaussian_sigma"]
    )
    glob = manifest["normalization"]["global"]
    scores = amap.normalise_scores(amap.image_scores(maps), glob["mean"], glob["std"])
    return [maps, scores[:, None], amap.decide(scores, glob["threshold"])[:, None]]


def infer(
    protocol: str, url: str, images: np.ndarray, model: str = "dcam", threshold: float | None = None
) -> list[np.ndarray]:
    if protocol == "http":
        import tritonclient.http as client
    else:
        import tritonclient.grpc as client
    conn = client.InferenceServerClient(url)
    image = client.InferInput("IMAGE", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    params = None if threshold is None else {"threshold": threshold}
    result = conn.infer(model, [image], parameters=params)
    return [result.as_numpy(name) for name in OUTPUTS]


def _compare(ref: list[np.ndarray], got: list[np.ndarray], threshold: float) -> dict:
    errors = output_errors(ref[:2], got[:2], OUTPUTS[:2])
    # A decision may flip only for a score within rounding distance of the threshold.
    clear = np.abs(ref[1] - threshold) > 1e-3
    errors["is_anomalous"] = {"mismatches": int((ref[2] != got[2])[clear].sum())}
    return errors


def verify_repository(
    repo: Path,
    run_dir: Path | None = None,
    tolerance: float = 1e-4,
    protocols: tuple[str, ...] = ("http", "grpc"),
) -> dict:
    """Serve `repo`, send a batch of 1 and one larger than the preferred size, compare."""
    build = read_build_report(repo)
    run_dir = Path(run_dir or build["run_dir"])
    manifest = read_manifest(Path(repo))
    size = manifest["input"]["size"][0]
    big = min(build["config"]["opt_batch_size"] + 2, build["config"]["max_batch_size"])
    images = np.concatenate(
        [parity_images(size, seed)["generated"] for seed in range(big // 5 + 1)]
    )
    batches = {"batch_1": images[:1], f"batch_{big}": images[:big]}
    threshold = manifest["normalization"]["global"]["threshold"]
    report: dict = {"repository": str(repo), "run_dir": str(run_dir), "results": {}}
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
