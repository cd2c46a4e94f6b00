"""The benchmark scripts run here: perf_analyzer on the server (gpu_check: test_gpu_check.py)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import perf  # noqa: E402

from dcam.serve.server import ServerConfig, TritonServer  # noqa: E402


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


def test_teacher_study_ranks_teachers_over_data_sets(tmp_path: Path) -> None:
    """The study probes each teacher on each generated data set and tabulates the mean."""
    import teacher_study

    args = ["--teacher", "shipped=fractal", "--teacher", "untrained=random"]
    args += ["--data-seeds", "3,4", "--image-size", "64", "--n-train", "6"]
    args += ["--work", str(tmp_path / "work"), "--results", str(tmp_path), "--tag", "t"]
    results = teacher_study.main(args)
    for name in ("shipped", "untrained"):
        per_data = [results["per_data"][name][s]["mean_image_auroc"] for s in ("3", "4")]
        assert results["teachers"][name]["mean"] == pytest.approx(sum(per_data) / 2)
    assert results["teachers"]["shipped"]["pretraining"]["images_seen"] > 100_000
    table = (tmp_path / "teacher-study-t.md").read_text()
    assert "| shipped | fractal |" in table and "| untrained | - |" in table
    assert json.loads((tmp_path / "teacher-study-t.json").read_text())["data_seeds"] == [3, 4]


def test_accuracy_reuses_only_a_finished_run_of_the_same_configuration(tmp_path: Path) -> None:
    import accuracy

    from dcam.core.files import write_json_atomic
    from dcam.training.config import TrainConfig

    cfg = TrainConfig(data=(str(tmp_path / "data"),), out=str(tmp_path / "run"), seed=1)
    assert accuracy.finished_run(cfg) is None  # nothing there yet
    (tmp_path / "run").mkdir()
    write_json_atomic(tmp_path / "run" / "config.json", cfg.to_dict())
    assert accuracy.finished_run(cfg) is None  # interrupted: no manifest was written
    write_json_atomic(tmp_path / "run" / "manifest.json", {"metrics": {"mean": {}}})
    assert accuracy.finished_run(cfg) == {"metrics": {"mean": {}}}
    other = TrainConfig(data=cfg.data, out=cfg.out, seed=1, epochs=cfg.epochs + 1)
    assert accuracy.finished_run(other) is None
