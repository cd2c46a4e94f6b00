"""`dcam-build deploy`: the overlay it writes for a real build renders with `kubectl kustomize`,
validates against the Kubernetes schemas, and carries the figures of that build (image tag,
model, input size, CPU threads, memory, CUDA pool), so nothing in deploy/ is edited by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from dcam.build.cli import build_group
from dcam.build.config import BuildConfig
from dcam.build.deploy import ANNOTATION, POOL_BATCHES, feature_bytes, image_tag
from dcam.build.engines import build_repository
from dcam.core.errors import ConfigError
from dcam.core.manifest import Manifest
from dcam.serve.compat import read_configs
from tests.test_deploy import KUBERNETES, by_kind, render


@pytest.fixture(scope="module")
def onnx_repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "onnx"
    build_repository(BuildConfig(run_dir=str(tiny_run), out=str(out), target="onnx", threads=3))
    return out


def deploy(repo: Path, out: Path, *options: str) -> dict[str, dict]:
    result = CliRunner().invoke(build_group, ["deploy", str(repo), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    assert f"kubectl apply -k {out}" in result.output
    objects = render(str(out))
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    return by_kind(objects)


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_cpu_overlay_carries_the_build(onnx_repo: Path, tmp_path: Path) -> None:
    objects = deploy(
        onnx_repo, tmp_path / "line", "--namespace", "line", "--replicas", "3",
        "--model-repository", "s3://plant/line",
    )  # fmt: skip
    deployment = objects["Deployment"]
    container = _container(deployment)
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert deployment["spec"]["replicas"] == 3
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"line"}
    assert objects["ConfigMap"]["data"]["MODEL_REPOSITORY"] == "s3://plant/line"
    # The pod gets exactly the cores the ONNX Runtime configs use: 3 threads x teacher, student.
    threads = [
        int(c.parameters["intra_op_thread_count"].string_value)
        for c in read_configs(onnx_repo).values()
        if c.platform == "onnxruntime_onnx"
    ]
    assert threads == [3, 3]
    assert container["resources"]["requests"]["cpu"] == "6"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    height, width = Manifest.read(onnx_repo).input_size
    assert annotations[f"{ANNOTATION}/input-size"] == f"{height}x{width}"
    assert annotations[f"{ANNOTATION}/model"] == "dcam"
    sizing = json.loads((tmp_path / "line" / "sizing.json").read_text())
    memory = container["resources"]
    assert memory["requests"]["memory"] == f"{sizing['memory_request_mib']}Mi"
    assert sizing["memory_request_mib"] < sizing["memory_limit_mib"]
    # The base's probes and rollout survive the patch.
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # The KServe alternative carries the same build.
    service = yaml.safe_load((tmp_path / "line" / "inferenceservice.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert model["runtimeVersion"] == "24.10-py3" and model["storageUri"] == "s3://plant/line"
    assert model["resources"] == container["resources"]
    assert service["metadata"]["namespace"] == "line"
    # Triton reads s3:// itself: no volume, no claim.
    assert "PersistentVolumeClaim" not in objects
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {"dshm"}  # /dev/shm for the Python backend stays
    assert all(m["mountPath"] != "/models" for m in container["volumeMounts"])


def test_a_volume_repository_keeps_the_base_claim(onnx_repo: Path, tmp_path: Path) -> None:
    objects = deploy(onnx_repo, tmp_path / "line")
    claim = objects["PersistentVolumeClaim"]  # a small build: never below the base's size
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    mounts = {m["mountPath"] for m in _container(objects["Deployment"])["volumeMounts"]}
    assert "/models" in mounts
    service = yaml.safe_load((tmp_path / "line" / "inferenceservice.yaml").read_text())
    assert service["spec"]["predictor"]["model"]["storageUri"] == "pvc://dcam-models"


def test_gpu_accelerated_onnx_build_goes_to_gpu_nodes(onnx_repo: Path, tmp_path: Path) -> None:
    """ONNX Runtime's TensorRT accelerator puts the networks on the GPU: the GPU overlay, the
    image with PyTorch for post-processing on the device, any release (engines build at load)."""
    repo = _with_report(onnx_repo, tmp_path / "ort-trt", onnx_accelerator="tensorrt")
    container = _container(deploy(repo, tmp_path / "gpu")["Deployment"])
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-pyt-python-py3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_refuses_threads_from_the_build_machine(onnx_repo: Path, tmp_path: Path) -> None:
    repo = _with_report(onnx_repo, tmp_path / "threads0", threads=0)
    result = CliRunner().invoke(build_group, ["deploy", str(repo), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--threads N" in result.output


def _with_report(repo: Path, copy: Path, target: str | None = None, **config) -> Path:
    """A copy of a real build whose report says it was built otherwise (no GPU or TensorRT
    here to build it so)."""
    shutil.copytree(repo, copy)
    report = json.loads((copy / "build_report.json").read_text())
    report["config"].update(config)
    if target:
        report.update(target=target, triton_container="24.10")
    (copy / "build_report.json").write_text(json.dumps(report))
    return copy


def test_a_new_build_rolls_out_and_a_bigger_batch_asks_for_more_memory(
    tiny_run: Path, onnx_repo: Path, tmp_path: Path
) -> None:
    before = deploy(onnx_repo, tmp_path / "a")["Deployment"]
    bigger = tmp_path / "bigger"
    cfg = BuildConfig(
        run_dir=str(tiny_run), out=str(bigger), target="onnx", max_batch_size=512, threads=3
    )
    build_repository(cfg)
    after = deploy(bigger, tmp_path / "b")["Deployment"]
    stamp = f"{ANNOTATION}/build"
    template = "spec", "template", "metadata", "annotations"
    assert _dig(before, template)[stamp] != _dig(after, template)[stamp]  # a new revision

    def memory(d: dict) -> int:
        return int(_container(d)["resources"]["requests"]["memory"].removesuffix("Mi"))

    assert memory(after) > memory(before)


def _dig(obj: dict, keys: tuple[str, ...]) -> dict:
    for key in keys:
        obj = obj[key]
    return obj


def test_gpu_overlay_sizes_the_cuda_pool_and_pins_the_build_release(
    onnx_repo: Path, tmp_path: Path
) -> None:
    """No TensorRT here: the report of a real build is marked as a plan build made in release
    24.10 to check the GPU rules (tag, pool) on a real manifest and configs."""
    repo = _with_report(onnx_repo, tmp_path / "trt", target="trt")
    report = json.loads((repo / "build_report.json").read_text())
    objects = deploy(repo, tmp_path / "gpu")
    container = _container(objects["Deployment"])
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-pyt-python-py3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pool = int(objects["ConfigMap"]["data"]["CUDA_MEMORY_POOL_BYTES"])
    batch = report["config"]["max_batch_size"]
    needed = POOL_BATCHES * batch * 2 * feature_bytes(Manifest.read(repo))
    assert needed <= pool < 2 * needed and pool & (pool - 1) == 0  # the next power of two
    service = yaml.safe_load((tmp_path / "gpu" / "inferenceservice.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert model["runtimeVersion"] == "24.10-pyt-python-py3"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert f"--cuda-memory-pool-byte-size=0:{pool}" in model["args"]
    refused = CliRunner().invoke(
        build_group, ["deploy", str(repo), "--out", str(tmp_path / "x"), "--image-tag", "25.01-py3"]
    )
    assert refused.exit_code != 0 and "built in Triton release 24.10" in refused.output


def test_plans_from_outside_the_container_need_a_tag() -> None:
    report = {"target": "trt", "config": {}, "versions": {"tensorrt": "10.5.0"}}
    with pytest.raises(ConfigError, match="pass --image-tag"):
        image_tag(report, None)
    assert image_tag(report, "24.10-pyt-python-py3") == "24.10-pyt-python-py3"


def test_refuses_the_embedded_target_and_existing_files(
    ensemble_repo: Path, onnx_repo: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(build_group, ["deploy", str(ensemble_repo), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--target onnx" in result.output
    deploy(onnx_repo, tmp_path / "line")
    again = runner.invoke(build_group, ["deploy", str(onnx_repo), "--out", str(tmp_path / "line")])
    assert again.exit_code != 0 and "--force" in again.output
    forced = ["deploy", str(onnx_repo), "--out", str(tmp_path / "line"), "--force"]
    assert runner.invoke(build_group, forced).exit_code == 0
