"""The TensorRT target without TensorRT: version rules, the release table, the FP16 graph and
its FP32 islands, the recipe and the in-container step (build_plans.py), each checked here
against what the real tools consume. TensorRT itself never runs on these machines."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from dcam.build import images, plans, trt
from dcam.build.config import BuildConfig
from dcam.build.engines import build_repository, resolve_target
from dcam.build.precision import precision_summary
from dcam.build.readiness import tensorrt_problems
from dcam.build.releases import (
    DEFAULT_RELEASE,
    RELEASES,
    release,
    require_matching_tensorrt,
    require_supported_tensorrt,
)
from dcam.core.errors import BuildError, ConfigError
from dcam.serve.compat import read_configs

STANDIN = Path(__file__).parent / "standins" / "trtexec.py"
SHAPES = {"IMAGE": [[1, 64, 64, 3], [8, 64, 64, 3], [32, 64, 64, 3]]}


@pytest.mark.skipif(trt.installed_tensorrt() is not None, reason="TensorRT is installed")
def test_trt_here_without_tensorrt_refuses_naming_the_versions(tmp_path: Path) -> None:
    cfg = BuildConfig(run_dir="run", out=str(tmp_path / "repo"), target="trt")
    with pytest.raises(BuildError, match=r"TensorRT 10\.x or 11\.x") as info:
        resolve_target(cfg)
    assert "--plans pod" in str(info.value) and f"{DEFAULT_RELEASE}-py3" in str(info.value)
    assert resolve_target(BuildConfig(run_dir="run", out="o")) == "cpu"
    assert not (tmp_path / "repo").exists()


def test_unsupported_tensorrt_is_refused_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TensorRT whose API we do not drive stops the build before any export."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="12.0.1"))
    with pytest.raises(ConfigError, match=r"TensorRT 12\.0\.1 is not supported.*10\.x and 11\.x"):
        resolve_target(BuildConfig(run_dir="missing-run", out="o", target="trt"))
    assert require_supported_tensorrt("10.13.3") == 10
    assert require_supported_tensorrt("11.4.1") == 11
    with pytest.raises(ConfigError):
        require_supported_tensorrt("9.3.0")


def test_release_table_rules() -> None:
    first_11 = min((r for r in RELEASES.values() if r.tensorrt_major == 11), key=lambda r: r.name)
    assert first_11.name == "26.06" and first_11.tensorrt == "11.0"
    assert release("24.10").server == "2.51.0" and release("24.10").tensorrt == "10.5"
    assert not release("26.01").bounded_queue and release("26.02").bounded_queue
    assert release(DEFAULT_RELEASE).tensorrt_major == 11
    assert release(DEFAULT_RELEASE).image == f"nvcr.io/nvidia/tritonserver:{DEFAULT_RELEASE}-py3"
    with pytest.raises(ConfigError, match=r"dcam knows 24\.10"):
        release("99.01")
    with pytest.raises(ConfigError, match=r"Triton container 24\.10.*26\.07-py3"):
        require_matching_tensorrt(release("26.07"), "11.1.0", container="24.10")
    require_matching_tensorrt(release("26.07"), "11.1.0", container="26.07")
    with pytest.raises(ConfigError, match="not in dcam's table"):
        require_matching_tensorrt(release("26.07"), "11.1.0", container=None)
    with pytest.raises(ConfigError, match=r"TensorRT 10\.13\.3 here.*10\.5"):
        require_matching_tensorrt(release("24.10"), "10.13.3", container=None)
    require_matching_tensorrt(release("24.10"), "10.5.0.18", container=None)


def test_trtexec_commands_follow_the_tensorrt_major() -> None:
    """TensorRT 11 removed --fp16 (its trtexec refuses unknown options): the graph carries FP16."""
    eleven = plans.trtexec_command("trtexec", "m.onnx", "m.plan", SHAPES, 1024, "t.cache", 11)
    assert not {"--fp16", "--stronglyTyped"} & set(eleven)
    assert "--minShapes=IMAGE:1x64x64x3" in eleven and "--maxShapes=IMAGE:32x64x64x3" in eleven
    assert "--memPoolSize=workspace:1024M" in eleven and "--skipInference" in eleven
    ten = plans.trtexec_command("trtexec", "m.onnx", "m.plan", SHAPES, 1024, "t.cache", 10)
    assert "--fp16" in ten
    fleet = plans.trtexec_command("t", "m", "p", SHAPES, 1, "c", 11, hardware="ampere+")
    assert "--hardwareCompatibilityLevel=ampere+" in fleet
    same = plans.trtexec_command("t", "m", "p", SHAPES, 1, "c", 11, hardware="same-cc")
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in same


def test_pod_build_is_fused_and_served_by_the_stock_image(trt_pod_repo: Path) -> None:
    report = json.loads((trt_pod_repo / "build_report.json").read_text())
    assert report["layout"] == "fused" and report["plans"] == "pod"
    assert report["serving_image"]["image"] == f"nvcr.io/nvidia/tritonserver:{DEFAULT_RELEASE}-py3"
    configs = read_configs(trt_pod_repo)
    fused, calibrate = configs["fused"], configs["calibrate"]
    assert fused.platform == "tensorrt_plan" and fused.default_model_filename == "model.plan"
    assert fused.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (
        calibrate.backend == "python" and "FORCE_CPU_ONLY_INPUT_TENSORS" not in calibrate.parameters
    )
    # From 26.02 ensembles survive a full step queue: the entry model rejects past a bound.
    policy = fused.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 4 * 32 and policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert images.stock_variant(configs) == "py3"


def test_fp16_graph_keeps_the_sensitive_maths_in_fp32(trt_pod_repo: Path) -> None:
    version = trt_pod_repo / "fused" / "1"
    fp16 = version / "model.fp16.onnx"
    assert tensorrt_problems(fp16) == []
    summary = precision_summary(onnx.load(str(fp16)))
    assert {"Conv", "Relu", "MaxPool"} <= set(summary["fp16"])
    assert {"Div", "Sqrt", "ReduceSum", "ReduceMax", "MatMul", "Sub"} <= set(summary["fp32"])
    assert not {"ReduceMax", "ReduceSum", "Sqrt", "MatMul"} & set(summary["fp16"])
    model = onnx.load(str(fp16))
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert inputs == {"IMAGE": onnx.TensorProto.UINT8}  # the config is the FP32 graph's
    assert set(outputs.values()) == {onnx.TensorProto.FLOAT}
    # Casts only where the regions meet: into the backbones, out of each level of both.
    assert summary["casts"] == 1 + 1 + 6
    report = json.loads((trt_pod_repo / "build_report.json").read_text())
    errors = report["models"]["fused"]["fp16_emulated_vs_fp32"]
    assert 0 < errors["anomaly_map"]["max_rel"] < 2e-2


def test_recipe_and_references(trt_pod_repo: Path) -> None:
    recipe = json.loads((trt_pod_repo / plans.RECIPE).read_text())
    assert recipe["triton_release"] == DEFAULT_RELEASE and recipe["tensorrt_major"] == 11
    assert filecmp.cmp(trt_pod_repo / plans.SCRIPT, plans.__file__, shallow=False)
    (model,) = recipe["models"]
    assert model["shapes"] == [[1, 64, 64, 3], [8, 64, 64, 3], [32, 64, 64, 3]]
    images_bin = trt_pod_repo / recipe["parity"]["file"]
    assert images_bin.stat().st_size == np.prod(recipe["parity"]["shape"])
    sizes = {o["name"]: (trt_pod_repo / o["reference"]).stat().st_size for o in model["outputs"]}
    assert sizes == {"anomaly_map": 4 * 2 * 64 * 64, "raw_score": 4 * 2}


def test_ensemble_on_gpu_needs_the_derived_image(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ens"
    cfg = BuildConfig(
        run_dir=str(tiny_run), out=str(out), target="trt", plans="pod", layout="ensemble"
    )
    report = build_repository(cfg)
    assert images.stock_variant(read_configs(out)) is None
    assert report["serving_image"]["unmet"] == ["postprocess: Python package torch"]
    assert images.DERIVED_IMAGE in report["serving_image"]["image"]
    assert (Path(__file__).parents[1] / images.DERIVED_IMAGE).is_file()
    for role in ("teacher", "student"):  # normalisation stays FP32 in the feature graphs
        summary = report["models"][role]["precision"]
        assert {"Sub", "Div"} <= set(summary["fp32"]) and "Conv" in summary["fp16"]


def _standin_path(tmp_path: Path, gpu: str = "NVIDIA H200, 9.0") -> dict:
    """PATH with the stand-in trtexec and an nvidia-smi that names one GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "trtexec").write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n')
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho '{gpu}'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "STANDIN_LOG": str(tmp_path / "log")}


def _build_plans(repo: Path, cache: Path, link: Path, env: dict) -> subprocess.CompletedProcess:
    """build_plans.py as the serving image runs it: the system Python without site-packages
    (-I -S: no dcam, no numpy, no ONNX Runtime), only the copy inside the repository."""
    cmd = ["/usr/bin/python3", "-I", "-S", str(repo / plans.SCRIPT)]
    cmd += ["--source", str(repo), "--cache", str(cache), "--link", str(link)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]


def test_build_plans_in_a_stock_like_environment(trt_pod_repo: Path, tmp_path: Path) -> None:
    env = _standin_path(tmp_path)
    cache, link = tmp_path / "cache", tmp_path / "serving" / "repository"
    link.parent.mkdir()
    done = _build_plans(trt_pod_repo, cache, link, env)
    assert done.returncode == 0, done.stderr
    key = cache / "nvidia-h200_trt11.4.0"
    assert done.stdout.strip() == str(key) and link.resolve() == key
    assert (key / "fused" / "1" / "model.plan").is_file()
    report = json.loads((key / "plans_report.json").read_text())
    assert max(report["models"]["fused"].values()) < 2e-2
    tied_to = {"tensorrt": "11.4.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    assert tied_to.items() <= report.items()
    served = json.loads((key / "manifest.json").read_text())["serving"]
    assert tied_to.items() <= served["tensorrt"].items() and served["triton_release"] == "26.07"
    builds = [c for c in _calls(tmp_path) if any(a.startswith("--onnx=") for a in c)]
    (build,) = builds  # in a private folder, then renamed into the key
    assert any(a.endswith("/repo/fused/1/model.fp16.onnx") for a in build)
    again = _build_plans(trt_pod_repo, cache, link, env)  # a second pod reuses the key
    assert again.returncode == 0 and again.stdout == done.stdout
    assert [c for c in _calls(tmp_path) if any(a.startswith("--onnx=") for a in c)] == builds
    assert not list(cache.glob(".building-*"))


def test_build_plans_on_tensorrt_10_uses_the_fp32_graph_and_its_flag(
    trt_pod_repo: Path, tmp_path: Path
) -> None:
    env = {**_standin_path(tmp_path, "NVIDIA A100-SXM4-80GB, 8.0"), "STANDIN_TENSORRT": "101303"}
    done = _build_plans(trt_pod_repo, tmp_path / "cache", tmp_path / "link", env)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).name == "nvidia-a100-sxm4-80gb_trt10.13.3"
    (build,) = [c for c in _calls(tmp_path) if any(a.startswith("--onnx=") for a in c)]
    assert "--fp16" in build and any(a.endswith("/fused/1/model.onnx") for a in build)


def test_build_plans_refuses_a_plan_that_disagrees(trt_pod_repo: Path, tmp_path: Path) -> None:
    env = {**_standin_path(tmp_path), "STANDIN_NOISE": "1.0"}
    done = _build_plans(trt_pod_repo, tmp_path / "cache", tmp_path / "link", env)
    assert done.returncode == 1 and "differs from ONNX Runtime FP32" in done.stderr
    assert not (tmp_path / "link").exists() and not list((tmp_path / "cache").iterdir())


@pytest.mark.skipif(trt.installed_tensorrt() is not None, reason="TensorRT is installed")
def test_cli_refuses_trt_here_as_a_message(tiny_run: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dcam.build.cli import build_group

    out = tmp_path / "repo"
    args = ["engines", str(tiny_run), "--out", str(out), "--target", "trt"]
    result = CliRunner().invoke(build_group, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "TensorRT 10.x or 11.x" in result.output and "--plans pod" in result.output
    unknown = CliRunner().invoke(build_group, [*args, "--triton-release", "23.01"])
    assert unknown.exit_code == 2 and "26.07" in unknown.output  # click lists the table
    assert not out.exists()


def test_hardware_compatibility_travels_with_the_recipe(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    cfg = BuildConfig(
        run_dir=str(tiny_run),
        out=str(out),
        target="trt",
        plans="pod",
        hardware_compatibility="ampere+",
    )
    build_repository(cfg)
    assert json.loads((out / plans.RECIPE).read_text())["hardware"] == "ampere+"
    assert plans.plan_key("NVIDIA H200", "11.4.0", "ampere+") == "nvidia-h200_trt11.4.0_ampere+"
    with pytest.raises(ConfigError, match="hardware_compatibility"):
        BuildConfig(run_dir="r", out="o", hardware_compatibility="hopper+")
