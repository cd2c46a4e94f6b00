"""Calibration versions of the deciding model: the record, the build id, and the real server
taking a new version up without a restart (core/served_calibration.py)."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from dcam.client.results import FIELDS, Result, open_results, read_results
from dcam.client.score import ScoreConfig, score_paths
from dcam.client.triton import parse_spec
from dcam.core.calibration import Calibration
from dcam.core.errors import ConfigError
from dcam.core.manifest import Manifest
from dcam.core.names import (
    CALIBRATE_MODEL,
    CALIBRATION_VERSION,
    DECISION_OUTPUTS,
    ENSEMBLE_MODEL,
    POSTPROCESS_MODEL,
)
from dcam.core.scoring import ScoringSpec
from dcam.core.served_calibration import (
    BUILD_ID_PARAMETER,
    CALIBRATION_FILE,
    CalibrationRecord,
    same_rule,
    served_spec,
)
from dcam.serve.server import ServerConfig, TritonServer
from tests.test_core import _spec

DECIDING = {"ensemble": POSTPROCESS_MODEL, "fused": CALIBRATE_MODEL}


def _thresholds(spec: ScoringSpec, threshold: float) -> ScoringSpec:
    """The same rule with every threshold, global and per product, set to `threshold`."""
    return dataclasses.replace(
        spec,
        calibration=dataclasses.replace(spec.calibration, threshold=threshold),
        per_category={
            k: dataclasses.replace(v, threshold=threshold) for k, v in spec.per_category.items()
        },
    )


def test_calibration_record_round_trips_through_json() -> None:
    record = CalibrationRecord(
        version=3,
        build_id="0a1b2c3d4e5f",
        scoring=_thresholds(_spec(), 1.5),
        applied_by="line-2 review",
        applied_at="2025-01-01T00:00:00+00:00",
        previous=2,
        source={"labels": 40, "target_fpr": 0.01},
    )
    assert CalibrationRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(ConfigError, match="format"):
        CalibrationRecord.from_dict({**record.to_dict(), "format": 99})
    with pytest.raises(ConfigError, match="malformed"):
        CalibrationRecord.from_dict({k: v for k, v in record.to_dict().items() if k != "scoring"})


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: dataclasses.replace(s, calibration=Calibration(0.6, 0.25, 2.0)), "statistics"),
        (
            lambda s: dataclasses.replace(
                s, per_category={**s.per_category, "bottle": Calibration(0.16, 0.05, 3.0)}
            ),
            "statistics",
        ),
        (
            lambda s: dataclasses.replace(s, per_category={"bottle": s.per_category["bottle"]}),
            "products",
        ),
        (lambda s: dataclasses.replace(s, size=(32, 32)), "size"),
    ],
    ids=["mean", "std", "products", "size"],
)
def test_same_rule_refuses_anything_but_thresholds(
    change: Callable[[ScoringSpec], ScoringSpec], problem: str
) -> None:
    base = _spec()
    same_rule(base, _thresholds(base, -1.0))  # thresholds alone may move
    with pytest.raises(ConfigError, match=problem):
        same_rule(base, change(base))


def test_served_spec_is_the_folders_record_of_this_build_only(tmp_path: Path) -> None:
    base = _spec()
    assert served_spec(str(tmp_path), base, "aaaaaaaaaaaa") is base  # no record: the build's
    lowered = _thresholds(base, 0.5)
    record = CalibrationRecord(version=2, build_id="aaaaaaaaaaaa", scoring=lowered)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(record.to_dict()))
    assert served_spec(str(tmp_path), base, "aaaaaaaaaaaa") == lowered
    with pytest.raises(ConfigError, match="calibration of build aaaaaaaaaaaa"):
        served_spec(str(tmp_path), base, "bbbbbbbbbbbb")
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        served_spec(str(tmp_path), base, "aaaaaaaaaaaa")


def _config(repo: Path, model: str) -> model_config_pb2.ModelConfig:
    text = (repo / model / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _build_id(repo: Path) -> str:
    return json.loads((repo / "build_report.json").read_text())["build_id"]


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_build_names_itself_in_the_report_and_the_configs(
    layout: str, request: pytest.FixtureRequest
) -> None:
    repo: Path = request.getfixturevalue(f"{layout}_repo")
    build_id = _build_id(repo)
    assert re.fullmatch("[0-9a-f]{12}", build_id)
    for model in (DECIDING[layout], ENSEMBLE_MODEL):
        config = _config(repo, model)
        assert config.parameters[BUILD_ID_PARAMETER].string_value == build_id
        version = next(o for o in config.output if o.name == CALIBRATION_VERSION)
        assert version.data_type == model_config_pb2.TYPE_INT64 and list(version.dims) == [1]
    steps = _config(repo, ENSEMBLE_MODEL).ensemble_scheduling.step
    deciding = next(s for s in steps if s.model_name == DECIDING[layout])
    assert deciding.output_map[CALIBRATION_VERSION] == CALIBRATION_VERSION
    assert (repo / DECIDING[layout] / "1" / "served_calibration.py").is_file()
    other = "ensemble" if layout == "fused" else "fused"
    assert _build_id(request.getfixturevalue(f"{other}_repo")) != build_id  # one per build


# --- the real server ---------------------------------------------------------------------------


def _score(server: TritonServer, paths: list[Path]) -> dict[str, Result]:
    cfg = ScoreConfig(urls=(server.grpc_url,), batch_size=4, concurrency=1, ready_timeout_s=30)
    results = {r.path: r for r in asyncio.run(score_paths(paths, cfg))}
    assert [r.error for r in results.values() if not r.ok] == []
    return results


def _until(
    server: TritonServer, paths: list[Path], calibration: str, timeout_s: float = 30.0
) -> dict[str, Result]:
    """Score until every row names `calibration`: the poll has taken the change up."""
    deadline = time.monotonic() + timeout_s
    while True:
        results = _score(server, paths)
        if {r.calibration for r in results.values()} == {calibration}:
            return results
        if time.monotonic() > deadline:
            seen = sorted({str(r.calibration) for r in results.values()})
            pytest.fail(f"still {seen} after {timeout_s:.0f} s, not {calibration}")
        time.sleep(0.5)


def _add_version(model_dir: Path, version: int, record: CalibrationRecord) -> None:
    """A copy of version 1 with `record` beside it, renamed into place whole (Triton's scan
    skips a folder whose name is not a number), so the poll never sees half a version."""
    staging = model_dir / f".staging-{version}"
    shutil.copytree(model_dir / "1", staging)
    (staging / CALIBRATION_FILE).write_text(json.dumps(record.to_dict()))
    staging.rename(model_dir / str(version))


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_a_new_calibration_version_is_served_without_a_restart(
    layout: str, request: pytest.FixtureRequest, synthetic_root: Path, tmp_path: Path
) -> None:
    repo = shutil.copytree(request.getfixturevalue(f"{layout}_repo"), tmp_path / "repo")
    build_id, model_dir = _build_id(repo), repo / DECIDING[layout]
    base = Manifest.read(repo).scoring
    paths = sorted(synthetic_root.glob("*/test/good/*.png"))[:6]
    with TritonServer(ServerConfig(repo, poll_secs=1)) as server:
        before = _score(server, paths)
        assert {r.calibration for r in before.values()} == {f"{build_id}/1"}
        assert not all(r.is_anomalous for r in before.values())  # good parts, built thresholds

        # Under every image's score: all flagged. Not -100: below about -5.6 the drift law
        # (line metrics) cannot be drawn, and such a version fails to load.
        low = min(r.score for r in before.values()) - 0.5
        assert low > -5.0
        lowered = CalibrationRecord(2, build_id, _thresholds(base, low), previous=1)
        _add_version(model_dir, 2, lowered)
        after = _until(server, paths, f"{build_id}/2")
        assert all(r.is_anomalous for r in after.values())
        assert {p: r.score for p, r in after.items()} == {p: r.score for p, r in before.items()}

        shutil.rmtree(model_dir / "2")  # rolled back
        back = _until(server, paths, f"{build_id}/1")
        assert {p: r.is_anomalous for p, r in back.items()} == {
            p: r.is_anomalous for p, r in before.items()
        }

        foreign = CalibrationRecord(3, "f" * 12, _thresholds(base, low), previous=1)
        _add_version(model_dir, 3, foreign)
        deadline = time.monotonic() + 30
        while "calibration of build ffffffffffff" not in server.log_path.read_text(
            errors="replace"
        ):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        kept = _score(server, paths)
        assert {r.calibration for r in kept.values()} == {f"{build_id}/1"}
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready(DECIDING[layout], "1")
        assert not client.is_model_ready(DECIDING[layout], "3")
        # Strict readiness: the server says not ready while version 3 is not (Triton 2.51 keeps
        # a failed version's state even after its folder is removed, until a restart); the
        # client checks the model's readiness, which stays.
        assert not client.is_server_ready() and client.is_model_ready(ENSEMBLE_MODEL)


def test_the_client_asks_for_the_version_only_where_the_model_answers_it() -> None:
    image = {"name": "IMAGE", "datatype": "UINT8", "shape": [-1, 64, 64, 3]}
    old = [{"name": n} for n in ("anomaly_map", "score", "is_anomalous")]
    spec = parse_spec({"inputs": [image], "outputs": old}, "dcam")
    assert spec.output_names(DECISION_OUTPUTS) == DECISION_OUTPUTS
    new = parse_spec({"inputs": [image], "outputs": [*old, {"name": CALIBRATION_VERSION}]}, "d")
    assert new.output_names(DECISION_OUTPUTS) == (*DECISION_OUTPUTS, CALIBRATION_VERSION)
    new.build_id = "0a1b2c3d4e5f"
    assert new.calibration(2) == "0a1b2c3d4e5f/2"


def test_results_written_before_the_calibration_column_resume(tmp_path: Path) -> None:
    old = tmp_path / "scores.csv"
    with old.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, [f for f in FIELDS if f != "calibration"])
        writer.writeheader()
        writer.writerow({"path": "a.png", "score": 0.5, "is_anomalous": False})
        writer.writerow({"path": "b.png", "error": "inference failed: down", "retryable": True})
    assert [r["path"] for r in read_results(old)] == ["a.png", "b.png"]
    writer, done = open_results(old, resume=True, force=False)
    with writer:
        writer.write(Result("b.png", score=2.0, is_anomalous=True, calibration="0a1b/2"))
    assert done == {"a.png"}
    rows = {r["path"]: r for r in read_results(old)}
    assert rows["a.png"]["calibration"] == "" and rows["b.png"]["calibration"] == "0a1b/2"
