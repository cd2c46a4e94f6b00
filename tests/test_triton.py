"""The built repositories served by the real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from dcam.build.cli import build_group
from dcam.build.parity import parity_images
from dcam.build.verify import OUTPUTS, infer, reference_outputs, verify_repository
from dcam.core import scoring
from dcam.core.manifest import Manifest
from dcam.serve.server import ServerConfig, ServerError, TritonServer, free_port

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_verify_matches_reference(layout: str, ensemble_repo: Path, fused_repo: Path) -> None:
    repo = ensemble_repo if layout == "ensemble" else fused_repo
    report = verify_repository(repo)
    assert report["ok"]
    assert {k.split("/")[0] for k in report["results"]} == {"http", "grpc"}
    assert {k.split("/")[1] for k in report["results"]} == {"batch_1", "batch_10"}
    for outs in report["results"].values():
        assert outs["anomaly_map"]["max_rel"] < 1e-4
        assert outs["is_anomalous"]["mismatches"] == 0


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_threshold_override_per_request(
    layout: str, ensemble_repo: Path, fused_repo: Path, tiny_run: Path
) -> None:
    repo = ensemble_repo if layout == "ensemble" else fused_repo
    images = parity_images(64)["generated"]
    with TritonServer(ServerConfig(repo)) as server:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            _, scores, _ = infer(protocol, url, images)
            middle = float(np.median(scores))
            _, _, decided = infer(protocol, url, images, threshold=middle)
            np.testing.assert_array_equal(decided, scores > middle)
            assert 0 < decided.sum() < len(images)


def test_verify_cli(ensemble_repo: Path) -> None:
    result = CliRunner().invoke(build_group, ["verify", str(ensemble_repo)])
    assert result.exit_code == 0, result.output
    assert "match the in-process reference" in result.output


def test_verify_detects_a_wrong_reference(
    ensemble_repo: Path, tiny_run: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    import torch

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    state = torch.load(other / "student.pt", weights_only=True)
    state["layer3.1.conv2.weight"] = state["layer3.1.conv2.weight"] * 2
    torch.save(state, other / "student.pt")
    manifest = json.loads((other / "manifest.json").read_text())
    assert manifest["backbone"] == "resnet18"
    result = CliRunner().invoke(
        build_group, ["verify", str(ensemble_repo), "--run-dir", str(other)]
    )
    assert result.exit_code == 1
    assert "differ from the in-process reference" in result.output


def test_server_reports_port_in_use_and_load_failures(ensemble_repo: Path, tmp_path: Path) -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        refused = TritonServer(ServerConfig(ensemble_repo, http_port=port))
        with pytest.raises(ServerError, match=f"port {port}"):
            refused.start()
        assert refused.log_path is None  # refused before anything was written
    broken = tmp_path / "broken"
    (broken / "dcam" / "1").mkdir(parents=True)
    (broken / "dcam" / "config.pbtxt").write_text('name: "dcam"\nbackend: "python"\n')
    (broken / "dcam" / "1" / "model.py").write_text("raise RuntimeError('boom at import')\n")
    failed = TritonServer(ServerConfig(broken, ready_timeout_s=60))
    with pytest.raises(ServerError, match="boom at import"):  # the log's tail, read before removal
        failed.start()
    assert not failed.log_path.parent.exists()


def test_reference_outputs_shapes(tiny_run: Path) -> None:

    manifest = Manifest.read(tiny_run)
    outs = reference_outputs(tiny_run, manifest, parity_images(64)["random"])
    assert [o.shape for o in outs] == [(3, 64, 64), (3, 1), (3, 1)]
    assert len(OUTPUTS) == 3


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_bad_threshold_is_that_requests_error(
    layout: str, ensemble_repo: Path, fused_repo: Path
) -> None:
    """A malformed request parameter fails its own request, permanently; the server goes on."""
    import tritonclient.grpc as grpcclient

    from dcam.client.triton import is_retryable

    repo = ensemble_repo if layout == "ensemble" else fused_repo
    images = parity_images(64)["generated"][:2]
    with TritonServer(ServerConfig(repo)) as server:
        conn = grpcclient.InferenceServerClient(server.grpc_url)
        image = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
        image.set_data_from_numpy(images)
        with pytest.raises(InferenceServerException, match="finite number") as info:
            conn.infer("dcam", [image], parameters={"threshold": "abc"})
        assert not is_retryable(info.value)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as unknown:
            conn.infer("no_such_model", [image])
        assert not is_retryable(unknown.value)
        _, scores, _ = infer("grpc", server.grpc_url, images)
        assert scores.shape == (2, 1)
    with pytest.raises(InferenceServerException) as down:
        conn.infer("dcam", [image])
    assert is_retryable(down.value), down.value.status()


def test_support_modules_run_without_the_dcam_package(ensemble_repo: Path) -> None:
    """The copies beside the Triton model import only each other: a stock container has no dcam."""
    version = ensemble_repo / "postprocess" / "1"
    code = f"""
import importlib.abc, json, sys
import numpy as np

class NoDcam(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "dcam" or name.startswith("dcam."):
            raise ImportError("dcam is not installed in a stock Triton container")

sys.meta_path.insert(0, NoDcam())
sys.path.insert(0, {str(version)!r})
import batching, scoring
spec = scoring.ScoringSpec.from_dict(json.loads(sys.stdin.read()))
rng = np.random.default_rng(0)
t = [rng.normal(size=(2, 8, 16, 16)).astype(np.float32) for _ in range(3)]
s = [rng.normal(size=(2, 8, 16, 16)).astype(np.float32) for _ in range(3)]
out = scoring.score(spec, t, s)
try:
    scoring.request_threshold({{"threshold": "x"}})
    raise SystemExit("a malformed threshold was accepted")
except ValueError:
    pass
assert batching.split({{"a": np.arange(5)}}, [2, 3])[1]["a"].tolist() == [2, 3, 4]
print(json.dumps(out.normalised.tolist()))
"""
    manifest = Manifest.read(ensemble_repo)
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=manifest.scoring.to_json(),
        capture_output=True,
        text=True,
        check=True,
    )
    rng = np.random.default_rng(0)
    t = [rng.normal(size=(2, 8, 16, 16)).astype(np.float32) for _ in range(3)]
    s = [rng.normal(size=(2, 8, 16, 16)).astype(np.float32) for _ in range(3)]
    expected = scoring.score(manifest.scoring, t, s).normalised
    np.testing.assert_allclose(json.loads(result.stdout), expected, rtol=1e-6)


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_category_parameter_applies_that_products_calibration(
    layout: str, ensemble_repo: Path, fused_repo: Path, tiny_run: Path
) -> None:
    """One model, many products: a request naming its product is normalised and decided with
    that product's statistics; without it, the global ones; an unknown name is its error."""
    repo = ensemble_repo if layout == "ensemble" else fused_repo
    manifest = Manifest.read(tiny_run)
    assert set(manifest.scoring.per_category) == {"carpet", "nut"}
    images = parity_images(64)["generated"]
    with TritonServer(ServerConfig(repo)) as server:
        for category in (None, "carpet", "nut"):
            ref = reference_outputs(tiny_run, manifest, images, category)
            got = infer("grpc", server.grpc_url, images, category=category)
            calibration = manifest.scoring.calibration_for(category)
            # As raw scores: one held-out image per product in the tiny run makes its std the
            # 1e-6 floor, so z-scores magnify float32 rounding a millionfold.
            raw = [s * calibration.std + calibration.mean for s in (got[1], ref[1])]
            np.testing.assert_allclose(raw[0], raw[1], rtol=1e-5, atol=1e-6)
            clear = np.abs(ref[1] - calibration.threshold) > 1e-3
            np.testing.assert_array_equal(got[2][clear], ref[2][clear])
        # The request's own fault, with the status that says so (not 500 / INTERNAL).
        for protocol, status in (("http", "400"), ("grpc", "StatusCode.INVALID_ARGUMENT")):
            url = server.http_url if protocol == "http" else server.grpc_url
            with pytest.raises(
                InferenceServerException, match=r"unknown category 'sofa'.*carpet"
            ) as err:
                infer(protocol, url, images, category="sofa")
            assert err.value.status() == status


def test_a_stopped_server_leaves_no_folder_unless_told_to_keep_its_log(ensemble_repo: Path) -> None:
    """Test runs start hundreds of servers: each leaving its folder behind once filled CI's disk."""
    with TritonServer(ServerConfig(ensemble_repo)) as plain:
        work = plain.log_path.parent
        assert (work / "runtime" / "bin" / "tritonserver").is_file()
    assert not work.exists()
    with TritonServer(ServerConfig(ensemble_repo, keep_log=True)) as kept:
        pass
    try:
        assert "Started GRPCInferenceService" in kept.log_path.read_text()
        assert sorted(p.name for p in kept.log_path.parent.iterdir()) == ["server.log"]
    finally:
        shutil.rmtree(kept.log_path.parent)
