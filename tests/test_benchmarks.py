"""The benchmark scripts run here: the GPU check in CPU smoke mode, perf_analyzer on the server."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import perf  # noqa: E402

from dcam.serve.server import ServerConfig, TritonServer  # noqa: E402


def test_gpu_check_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH / "gpu_check.py"),
            "--device",
            "cpu",
            "--smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert {r["variant"] for r in report["throughput"]} == {"fp32", "fp16"}
    assert all(r["images_per_s"] > 0 for r in report["throughput"])
    assert report["fp16_vs_fp32"]["map_max_rel"] < 0.1
    assert 0 < report["postprocess_dlpack"]["share"] < 1
    assert report["machine"]["cores"] >= 1 and report["commit"]
    assert "FP16 vs FP32" in result.stdout


def test_perf_input_data_round_trips(tmp_path: Path) -> None:
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    path = perf.write_input_data(tmp_path / "in.json", [{"IMAGE": image}])
    entry = json.loads(path.read_text())["data"][0]["IMAGE"]
    assert entry["shape"] == [2, 4, 3]
    np.testing.assert_array_equal(
        np.frombuffer(base64.b64decode(entry["b64"]), np.uint8).reshape(2, 4, 3), image
    )


@pytest.mark.triton
def test_perf_analyzer_measures_the_ensemble(ensemble_repo: Path, tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    data = perf.write_input_data(tmp_path / "images.json", [{"IMAGE": i} for i in images])
    with TritonServer(ServerConfig(ensemble_repo)) as server:
        before = perf.model_stats(server.http_url)
        rows = perf.run_perf(
            "dcam", server.grpc_url, 2, "1:2:1", data, tmp_path / "p.csv", interval_ms=1500
        )
        stats = perf.stats_delta(before, perf.model_stats(server.http_url))
    assert [int(r["Concurrency"]) for r in rows] == [1, 2]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    assert stats["dcam"]["requests"] > 0
    assert stats["postprocess"]["requests"] == stats["dcam"]["requests"]
    summary = perf.summary_rows(
        [{"layout": "ensemble", "model": "dcam", "batch": 2, "shared_memory": "none", "rows": rows}]
    )
    perf.plot(summary, tmp_path / "plot.png", "test")
    assert (tmp_path / "plot.png").stat().st_size > 0
