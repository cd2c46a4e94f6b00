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


def test_rounds_rotate_the_order_and_keep_each_rounds_counters() -> None:
    import rounds

    assert [rounds.rotated(["a", "b", "c"], r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"],
    ]  # fmt: skip
    calls: list[str] = []
    clock = {"t": 0.0}

    def config(name: str, images: int):
        def run() -> int:
            calls.append(name)
            clock["t"] += images  # the probe's counter: one per image scored
            return images

        return run

    result = rounds.interleave(
        {"a": config("a", 4), "b": config("b", 8)},
        3,
        probes={"counter": lambda: {"n": clock["t"]}},
        log=lambda line: None,
    )
    assert calls[:2] == ["a", "b"]  # the untimed warm-up
    assert calls[2:] == ["a", "b", "b", "a", "a", "b"]
    assert result["order"] == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert result["images"] == {"a": [4, 4, 4], "b": [8, 8, 8]}
    assert result["deltas"]["counter"]["b"] == [{"n": 8.0}] * 3  # only its own call counted
    assert all(rate > 0 for rates in result["images_per_s"].values() for rate in rates)


def test_ratio_statistics_flag_rounds_that_disagree() -> None:
    import rounds

    steady = rounds.ratio({"x": [10.0, 20.0, 30.0], "y": [20.0, 40.0, 60.0]}, "x", "y")
    assert steady["median"] == pytest.approx(0.5)
    assert (steady["min"], steady["max"], steady["iqr_over_median"]) == (0.5, 0.5, 0.0)
    assert steady["consistent"] and steady["x"] == 20.0 and steady["of"] == "x / y"

    tight = rounds.spread([0.80, 0.82, 0.81, 0.83, 0.79])
    assert tight["median"] == pytest.approx(0.81) and tight["consistent"]
    assert (tight["min"], tight["max"]) == (0.79, 0.83)
    # The rounds disagree which side is faster: not evidence, however tight.
    straddling = rounds.spread([0.98, 0.99, 1.0, 1.01, 1.02])
    assert straddling["straddles_1"] and not straddling["consistent"]
    # All below 1, but the quartiles lie 0.7 and 0.95 apart around 0.9: IQR/median 28% > 10%.
    wide = rounds.spread([0.5, 0.7, 0.9, 0.95, 0.99])
    assert not wide["straddles_1"] and wide["iqr_over_median"] > rounds.MAX_IQR
    assert not wide["consistent"]
    share = rounds.spread([0.05, 0.06, 0.055], reference=None)  # a share: no side of 1
    assert share["consistent"] and not share["straddles_1"]
    table = rounds.ratio_rows({"r": straddling | {"of": "p / q"}}, {"r": ">= 0.97"})
    row = "| r (p / q) | 1.000 | 0.980 - 1.020 | 2.0% | **no** (straddles 1) | >= 0.97 |"
    assert table[-1] == row


def test_cpu_accounting_reads_busy_child_processes_from_proc() -> None:
    import os
    import signal
    import subprocess
    import time

    import cpu_accounting

    # Two children that spin until killed, under a shell that only waits (as tritonserver
    # stands over its stubs).
    child = f'{sys.executable} -c "while True: pass"'
    parent = subprocess.Popen(["sh", "-c", f"{child} & {child} & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(cpu_accounting.descendants(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        counters = cpu_accounting.CpuCounters({"fake": parent.pid})
        names = set(counters.pids)
        assert {cpu_accounting.SELF, "fake tritonserver"} <= names and len(names) == 4
        children = [n for n in names if n.startswith("fake stub")]
        before = counters()
        spent, deadline = 0.0, time.monotonic() + 10
        while spent < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
            after = counters()
            spent = sum(after[n] - before[n] for n in children)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
    assert spent > 0.1, after  # busy loops accrue their own CPU time in /proc/<pid>/stat
    assert after["fake tritonserver"] - before["fake tritonserver"] < 0.1  # sh only waits
    assert cpu_accounting.cpu_seconds(parent.pid) is None  # reaped: gone from /proc
    assert cpu_accounting.per_image([{"a": 1.0, "b": 0.5}, {"a": 3.0, "b": 0.5}], [10, 10]) == {
        "a": pytest.approx(0.2), "b": pytest.approx(0.05), "total": pytest.approx(0.25),
    }  # fmt: skip


@pytest.mark.triton
def test_throughput_gives_every_ratio_from_interleaved_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import common
    import throughput

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    args = ["--work", str(tmp_path / "work"), "--size", "64", "--images", "32", "--rounds", "2"]
    payload = throughput.main([*args, "--batches", "none", "--tag", "t"])
    names = [*throughput.RATIOS, throughput.SHARE]
    assert sorted(payload["ratios"]) == sorted(names)
    for r in payload["ratios"].values():
        assert len(r["rounds"]) == 2 and r["min"] <= r["median"] <= r["max"]
        assert isinstance(r["consistent"], bool)
    order = payload["interleaved"]["order"]
    assert order[1] == order[0][1:] + order[0][:1] and len(order[0]) == 6
    cpu = payload["cpu_s_per_image"]
    assert cpu["in_process"]["bench process"] > 0
    stubs = [k for k in cpu["ensemble"] if k.startswith("ensemble stub")]
    assert {s.rsplit(" ", 1)[1] for s in stubs} == {"teacher", "student", "postprocess"}
    assert sum(cpu["ensemble"][s] for s in stubs) > 0
    assert "| CPU ms per image |" in (tmp_path / "throughput-t.md").read_text()


@pytest.mark.triton
def test_client_transport_measures_the_client_with_and_without_a_queue_policy(
    tiny_run: Path, ensemble_repo: Path, tmp_path: Path
) -> None:
    import asyncio

    import client_transport
    import common
    import pipelines

    policed = pipelines.build(tiny_run, tmp_path, "ensemble", "-policy", queue_timeout_ms=3000)
    assert "default_queue_policy" not in (ensemble_repo / "teacher" / "config.pbtxt").read_text()
    assert "default_queue_policy" in (policed / "teacher" / "config.pbtxt").read_text()
    plain = ensemble_repo
    paths = common.production_files(tmp_path / "line", 16, 64)
    repos = {"default": ensemble_repo, "queue_policy": policed}
    result = client_transport.measure(repos, paths, tmp_path, 64, 2)
    summary = client_transport.summarise(result)
    assert sorted(summary["ratios"]) == sorted(client_transport.RATIOS)
    assert all(len(rates) == 2 for rates in result["images_per_s"].values())
    cpu = summary["cpu_s_per_image"]
    assert cpu["client_wire"]["bench process"] > 0 and "server stub teacher" in cpu["client_wire"]
    payload = {"tag": "t", "images": 16, "size": 64, "rounds": 2, "summary": summary}
    payload["stamp"] = {"commit": "abc", "machine": {"cores": 2}}
    assert "| ratio2_wire (client_wire / in_process) |" in client_transport.report(payload)
    with TritonServer(ServerConfig(plain)) as server:  # line_metrics_cost.py's one pass
        rate = asyncio.run(
            client_transport.client_rate(server.grpc_url, paths, tmp_path / "r.jsonl", 8, "none")
        )
    assert rate > 0


def test_accuracy_tables_carry_the_probe_to_student_gap() -> None:
    """Every accuracy table says what the teacher's features allow beside what was distilled."""
    import accuracy

    cell = {m: {"mean": 0.7, "spread": 0.02} for m in accuracy.METRICS}
    table = {name: {"nut": cell, "mean": cell} for name in ("stfpm", "dcam-mask")}
    probe = {"per_category": {"nut": 0.9}, "mean_image_auroc": 0.9}
    meta = {
        "teacher": "formula",
        "data_seed": 7,
        "seeds": [0],
        "epochs": 1,
        "image_size": 128,
        "minutes": 1.0,
        "probe": {"formula": probe},
        "teacher_of": {"stfpm": "formula", "dcam-mask": "formula"},
    }
    text = accuracy.markdown(table, meta)
    assert "| probe-to-student gap | +20.0 | +20.0 |" in text
    assert "nut 90.0, mean 90.0" in text


def test_levers_reproduce_the_runs_own_evaluation(tiny_run: Path) -> None:
    """The read-out variants start from the rule as trained: the run's own smoothing gives the
    image AUROC training reported, so every other variant differs by the lever alone."""
    import levers

    result = levers.rescore(tiny_run)
    sigma = json.loads((tiny_run / "config.json").read_text())["sigma"]
    reported = json.loads((tiny_run / "manifest.json").read_text())["metrics"]["mean"]
    variant = result["variants"][f"sigma {sigma:g}"]
    assert variant["image_auroc"] == pytest.approx(reported["image_auroc"], abs=1e-6)
    assert {"level-norm", "layer2+3", "sigma 0", "channel-std"} <= set(result["variants"])


def test_run_facts_read_back_what_the_run_wrote(tiny_run: Path) -> None:
    """The size study's best epochs, times and served decisions come from the run's own files."""
    import run_facts

    facts = run_facts.facts(tiny_run)
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert facts["image_auroc"] == manifest["metrics"]["mean"]["image_auroc"]
    assert 1 <= facts["best_epoch"] <= facts["epochs"] == 2
    assert 0.0 <= facts["served_fpr"] <= 1.0 and facts["seconds"] > 0
    assert "| 64 |" in run_facts.report({"runs": {"tiny": facts}})
