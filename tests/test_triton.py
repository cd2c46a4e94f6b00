"""The built repositories served by the real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dcam.build.cli import build_group
from dcam.build.parity import parity_images
from dcam.build.verify import OUTPUTS, infer, reference_outputs, verify_repository
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
        with pytest.raises(ServerError, match=f"port {port}"):
            TritonServer(ServerConfig(ensemble_repo, http_port=port)).start()
    broken = tmp_path / "broken"
    (broken / "dcam" / "1").mkdir(parents=True)
    (broken / "dcam" / "config.pbtxt").write_text('name: "dcam"\nbackend: "python"\n')
    (broken / "dcam" / "1" / "model.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ServerError, match="boom at import"):
        TritonServer(ServerConfig(broken, ready_timeout_s=60)).start()


def test_reference_outputs_shapes(tiny_run: Path) -> None:

    manifest = Manifest.read(tiny_run)
    outs = reference_outputs(tiny_run, manifest, parity_images(64)["random"])
    assert [o.shape for o in outs] == [(3, 64, 64), (3, 1), (3, 1)]
    assert len(OUTPUTS) == 3
