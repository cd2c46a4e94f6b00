"""dcam-build on a tiny training run: ONNX parity, configs, errors, nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from dcam.build.cli import build_group
from dcam.build.config import BuildConfig
from dcam.build.engines import build_repository, worst_errors
from dcam.core.errors import BuildError, ConfigError, DcamError, OutputExistsError
from dcam.core.manifest import Manifest
from dcam.core.scoring import ScoringSpec


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_ensemble_repository_layout_and_parity(ensemble_repo: Path) -> None:
    report = json.loads((ensemble_repo / "build_report.json").read_text())
    assert report["target"] == "cpu"
    assert set(report["models"]) == {"teacher", "student"}
    for err in worst_errors(report).values():
        assert err < 1e-4
    for module in ("anomaly_map.py", "scoring.py", "batching.py"):  # the rule, copied verbatim
        assert (ensemble_repo / "postprocess" / "1" / module).read_text() == (
            Path(__file__).parents[1] / "core" / module
        ).read_text()
    for name in ("teacher", "student", "postprocess", "dcam"):
        assert (ensemble_repo / name / "config.pbtxt").is_file()
        assert (ensemble_repo / name / "1").is_dir()
    assert json.loads((ensemble_repo / "manifest.json").read_text())["backbone"] == "resnet18"


def test_configs_parse_back_field_by_field(ensemble_repo: Path) -> None:
    manifest = json.loads((ensemble_repo / "manifest.json").read_text())
    teacher = parse_config(ensemble_repo / "teacher" / "config.pbtxt")
    assert teacher.backend == "python" and teacher.max_batch_size == 32
    assert [(i.name, i.data_type, list(i.dims)) for i in teacher.input] == [
        ("IMAGE", model_config_pb2.TYPE_UINT8, [64, 64, 3])
    ]
    assert [(o.name, list(o.dims)) for o in teacher.output] == [
        ("layer1", [64, 16, 16]),
        ("layer2", [128, 8, 8]),
        ("layer3", [256, 4, 4]),
    ]
    assert list(teacher.dynamic_batching.preferred_batch_size) == [8, 32]
    assert teacher.dynamic_batching.max_queue_delay_microseconds == 2000
    assert teacher.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert int(teacher.parameters["intra_op_threads"].string_value) >= 1
    assert [w.batch_size for w in teacher.model_warmup] == [1, 8, 32]  # up to the largest batch
    ensemble = parse_config(ensemble_repo / "dcam" / "config.pbtxt")
    published = ScoringSpec.from_json(ensemble.parameters["scoring"].string_value)
    assert published == Manifest.read(ensemble_repo).scoring
    post = parse_config(ensemble_repo / "postprocess" / "config.pbtxt")
    params = {k: v.string_value for k, v in post.parameters.items()}
    glob = manifest["scoring"]["global"]
    spec = ScoringSpec.from_json(params["scoring"])
    assert spec.calibration.threshold == glob["threshold"]
    assert spec.calibration.mean == glob["mean"]
    assert spec.sigma == manifest["scoring"]["sigma"]
    assert params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "yes"
    assert [o.name for o in post.output] == [
        "anomaly_map",
        "score",
        "is_anomalous",
        "calibration_version",
    ]
    assert list(post.output[0].dims) == [64, 64]
    assert post.output[2].data_type == model_config_pb2.TYPE_BOOL


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_ensemble_steps_consume_only_what_exists(
    layout: str, ensemble_repo: Path, fused_repo: Path
) -> None:
    repo = ensemble_repo if layout == "ensemble" else fused_repo
    ensemble = parse_config(repo / "dcam" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = parse_config(repo / step.model_name / "config.pbtxt")
        assert set(step.input_map) == {i.name for i in model.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) <= {o.name for o in model.output}
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available


def test_fused_repository(fused_repo: Path) -> None:
    """One graph for map and raw score, then a Python step that calibrates and decides with the
    request's product and threshold (a TensorRT plan cannot read request parameters), on both
    targets alike."""
    assert sorted(p.name for p in fused_repo.iterdir() if p.is_dir()) == [
        "calibrate",
        "dcam",
        "fused",
    ]
    config = parse_config(fused_repo / "dcam" / "config.pbtxt")
    assert [o.name for o in config.output] == [
        "anomaly_map",
        "score",
        "is_anomalous",
        "calibration_version",
    ]
    published = ScoringSpec.from_json(config.parameters["scoring"].string_value)
    assert published == Manifest.read(fused_repo).scoring  # clients read it (heatmap scales)
    fused = parse_config(fused_repo / "fused" / "config.pbtxt")
    assert [o.name for o in fused.output] == ["anomaly_map", "raw_score"]
    step = parse_config(fused_repo / "calibrate" / "config.pbtxt")
    assert [o.name for o in step.output] == ["score", "is_anomalous", "calibration_version"]
    assert step.backend == "python" and step.output[1].data_type == model_config_pb2.TYPE_BOOL
    assert step.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    report = json.loads((fused_repo / "build_report.json").read_text())
    assert worst_errors(report)["fused"] < 1e-4


def test_existing_output_needs_force(tiny_run: Path, ensemble_repo: Path) -> None:
    with pytest.raises(OutputExistsError, match="--force"):
        build_repository(BuildConfig(run_dir=str(tiny_run), out=str(ensemble_repo)))


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_missing_and_malformed_manifest(tmp_path: Path, tiny_run: Path) -> None:
    out = tmp_path / "repo"
    with pytest.raises(DcamError, match=r"manifest\.json does not exist"):
        build_repository(BuildConfig(run_dir=str(tmp_path), out=str(out)))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(DcamError, match="not valid JSON"):
        build_repository(BuildConfig(run_dir=str(run), out=str(out)))
    (run / "manifest.json").write_text(json.dumps({"manifest_version": 1}))
    with pytest.raises(DcamError, match="lacks the key"):
        build_repository(BuildConfig(run_dir=str(run), out=str(out)))
    _assert_nothing_written(out)


def test_weights_of_another_backbone_leave_nothing_behind(tmp_path: Path, tiny_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["backbone"] = "wide_resnet50_2"
    (run / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "repo"
    with pytest.raises(BuildError, match="do not match the manifest's backbone"):
        build_repository(BuildConfig(run_dir=str(run), out=str(out)))
    _assert_nothing_written(out)


def test_unwritable_output(tmp_path: Path, tiny_run: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BuildError, match="cannot create"):
        build_repository(BuildConfig(run_dir=str(tiny_run), out=str(blocker / "repo")))


def test_inline_student_is_refused(tmp_path: Path, tiny_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    state = torch.load(run / "student.pt", weights_only=True)
    state["dcam.0.channel.mlp.0.weight"] = torch.zeros(8, 64, 1, 1)
    torch.save(state, run / "student.pt")
    with pytest.raises(BuildError, match="inline"):
        build_repository(BuildConfig(run_dir=str(run), out=str(tmp_path / "repo")))


def test_bad_batch_settings() -> None:
    with pytest.raises(ConfigError, match="opt_batch_size"):
        BuildConfig(run_dir="r", out="o", opt_batch_size=64, max_batch_size=32)


def test_cli_reports_errors_as_messages(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        build_group, ["engines", str(tmp_path), "--out", str(tmp_path / "repo"), "--target", "cpu"]
    )
    assert result.exit_code == 1
    assert "manifest.json does not exist" in result.output
    assert "Traceback" not in result.output
