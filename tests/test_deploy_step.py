"""`dcam-build deploy`: the overlay it writes for a real build renders with `kubectl kustomize`,
validates against the Kubernetes schemas, and carries the figures of that build (image tag,
model, input size, CPU threads, memory, CUDA pool, GPU product, plan step), so nothing in
deploy/ is edited by hand."""

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
from dcam.build.deploy import ANNOTATION, image_tag
from dcam.build.engines import build_repository
from dcam.build.releases import DEFAULT_RELEASE
from dcam.build.sizing import POOL_BATCHES, feature_bytes
from dcam.core.errors import ConfigError
from dcam.core.manifest import Manifest
from dcam.serve.compat import read_configs
from tests.test_deploy import CUSTOM, KUBERNETES, by_kind, render


@pytest.fixture(scope="module")
def onnx_repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "onnx"
    build_repository(BuildConfig(run_dir=str(tiny_run), out=str(out), target="onnx", threads=3))
    return out


IMAGE = f"nvcr.io/nvidia/tritonserver:{DEFAULT_RELEASE}-py3"


BUCKET = ("--model-repository", "s3://plant/line")  # object storage, the default
LOADER = "registry.example.com/dcam-repository"  # the loader image, for --storage volume


def deploy(repo: Path, out: Path, *options: str) -> dict[str, dict]:
    """`dcam-build deploy` (into the test bucket unless storage is given), rendered, validated."""
    if not {"--storage", "--model-repository"} & set(options):
        options = (*BUCKET, *options)
    if "volume" in options and "--loader-image" not in options:
        options = (*options, "--loader-image", LOADER)
    result = CliRunner().invoke(build_group, ["deploy", str(repo), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    assert f"kubectl apply -k {out}" in result.output
    objects = render(str(out))
    for obj in objects:  # custom resources: tests/test_crd_schemas.py
        if obj["apiVersion"] not in CUSTOM:
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
    assert container["image"] == IMAGE
    assert deployment["spec"]["replicas"] == 3
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"line"}
    digest = deployment["spec"]["template"]["metadata"]["annotations"][f"{ANNOTATION}/build"]
    # One folder per build: a rollback brings back the older ConfigMap, so the older build.
    assert objects["ConfigMap"]["data"]["MODEL_REPOSITORY"] == f"s3://plant/line/{digest}"
    steps = json.loads((tmp_path / "line" / "sizing.json").read_text())["next_steps"]
    assert steps == [
        f"upload the build: aws s3 sync {onnx_repo.resolve()} s3://plant/line/{digest}/"
    ]
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
    assert model["runtimeVersion"] == f"{DEFAULT_RELEASE}-py3"
    assert model["storageUri"] == f"s3://plant/line/{digest}"
    assert model["resources"] == container["resources"]
    assert service["metadata"]["namespace"] == "line"
    # Triton reads s3:// itself: no volume, no claim.
    assert "PersistentVolumeClaim" not in objects
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {"dshm", "tmp"}  # /dev/shm for the Python backend, /tmp: a read-only root
    (tmp,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"] == f"{sizing['storage_gib'] + 2}Gi"  # the s3 copy fits
    assert all(m["mountPath"] != "/models" for m in container["volumeMounts"])


def test_a_volume_repository_is_loaded_by_a_job_into_its_own_folder(
    onnx_repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "line"
    options = ("--storage", "volume", "--loader-image", "registry.example.com/dcam-repo")
    objects = deploy(onnx_repo, out, *options)
    claim = objects["PersistentVolumeClaim"]  # a small build: never below the component's size
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    deployment = objects["Deployment"]
    digest = deployment["spec"]["template"]["metadata"]["annotations"][f"{ANNOTATION}/build"]
    repository = f"/models/builds/{digest}"
    assert objects["ConfigMap"]["data"]["MODEL_REPOSITORY"] == repository
    mounts = {m["mountPath"]: m for m in _container(deployment)["volumeMounts"]}
    assert mounts["/models"]["readOnly"]
    (wait,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert wait["name"] == "wait-for-repository" and "MODEL_REPOSITORY" in wait["args"][2]
    job = objects["Job"]  # named per build: a Job's template cannot change
    assert job["metadata"]["name"] == f"dcam-load-{digest}"
    (loader,) = job["spec"]["template"]["spec"]["containers"]
    assert loader["image"] == f"registry.example.com/dcam-repo:{digest}"
    assert 'mv "$dest.partial" "$dest"' in loader["command"][2]  # whole, or not there
    dockerfile = (out / "repository.Dockerfile").read_text()
    assert "COPY . /repository" in dockerfile and "USER 1000:1000" in dockerfile
    steps = json.loads((out / "sizing.json").read_text())["next_steps"]
    assert steps[0].startswith(
        f"build the loader image: docker build -f {out / 'repository.Dockerfile'}"
    )
    service = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    uri = service["spec"]["predictor"]["model"]["storageUri"]
    assert uri == f"pvc://dcam-models/builds/{digest}"
    bucketless = CliRunner().invoke(
        build_group, ["deploy", str(onnx_repo), "--out", str(out / "x")]
    )
    assert bucketless.exit_code != 0 and "--storage volume" in bucketless.output


def test_an_overlay_asked_for_entry_tls_and_monitoring_carries_them(
    onnx_repo: Path, tmp_path: Path
) -> None:
    """The components land in the overlay's namespace; TLS flags survive the GPU overlay's
    serving arguments (replaced in place, not as a list); the monitoring resources carry the
    label kube-prometheus-stack selects on."""
    repo = _with_report(onnx_repo, tmp_path / "trt", target="trt")  # plans built here
    options = ("--namespace", "line", "--entry", "gateway", "--tls", "--monitoring")
    objects = deploy(repo, tmp_path / "gpu", *options, "--prometheus-release", "prom")
    args = _container(objects["Deployment"])["args"]
    assert args[:2] == ["tritonserver", "--model-repository=$(MODEL_REPOSITORY)"]
    assert "--grpc-use-ssl=true" in args and "--grpc-server-cert=/tls/tls.crt" in args
    assert objects["GRPCRoute"]["metadata"]["namespace"] == "line"
    for kind in ("PodMonitor", "PrometheusRule"):
        assert objects[kind]["metadata"]["labels"]["release"] == "prom"
        assert objects[kind]["metadata"]["namespace"] == "line"
    # TLS pods behind the entry: the Gateway dials them with TLS, nginx speaks GRPCS.
    policy = objects["BackendTLSPolicy"]["spec"]
    assert policy["targetRefs"][0]["name"] == "dcam-triton"
    assert policy["validation"]["hostname"] == "dcam-triton"
    nginx = deploy(onnx_repo, tmp_path / "nginx", "--namespace", "line", "--entry", "ingress-nginx")
    assert nginx["Ingress"]["metadata"]["namespace"] == "line"
    annotation = "nginx.ingress.kubernetes.io/backend-protocol"
    assert nginx["Ingress"]["metadata"]["annotations"][annotation] == "GRPC"
    secured = deploy(onnx_repo, tmp_path / "nginx-tls", "--entry", "ingress-nginx", "--tls")
    assert secured["Ingress"]["metadata"]["annotations"][annotation] == "GRPCS"
    assert "BackendTLSPolicy" not in secured


def test_autoscaling_owns_the_replica_count(onnx_repo: Path, tmp_path: Path) -> None:
    """Under an autoscaler the overlay sets no replica count (an apply would reset it), and the
    KEDA query reads this namespace's pods only."""
    keda = deploy(onnx_repo, tmp_path / "keda", "--autoscaling", "keda", "--namespace", "line")
    assert "replicas" not in keda["Deployment"]["spec"]
    query = keda["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    assert query.count('namespace="line"') == 2 and 'namespace="dcam"' not in query
    assert keda["ScaledObject"]["metadata"]["namespace"] == "line"
    hpa = deploy(onnx_repo, tmp_path / "hpa", "--autoscaling", "hpa")
    assert "replicas" not in hpa["Deployment"]["spec"]
    assert hpa["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "dcam-triton"
    refused = CliRunner().invoke(
        build_group,
        ["deploy", str(onnx_repo), "--out", str(tmp_path / "x"), *BUCKET, "--autoscaling", "keda"],
    )
    assert refused.exit_code != 0 and "pass --namespace" in refused.output


def test_gpu_accelerated_onnx_build_goes_to_gpu_nodes(onnx_repo: Path, tmp_path: Path) -> None:
    """ONNX Runtime's TensorRT accelerator puts the networks on the GPU: the GPU overlay and
    the stock image, but no plans to build and any GPU product (engines build at load)."""
    repo = _with_report(onnx_repo, tmp_path / "ort-trt", onnx_accelerator="tensorrt")
    objects = deploy(repo, tmp_path / "gpu")
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    container = _container(objects["Deployment"])
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert not spec.get("initContainers") and "nvidia.com/gpu.product" not in spec["nodeSelector"]
    assert container["args"][:2] == ["tritonserver", "--model-repository=$(MODEL_REPOSITORY)"]
    assert objects["ConfigMap"]["data"]["MODEL_REPOSITORY"].startswith("s3://plant/line/")
    # Read from object storage: the GPU overlay's volume, loader and wait are taken out.
    assert "PersistentVolumeClaim" not in objects and "Job" not in objects
    assert {v["name"] for v in spec["volumes"]} == {"dshm", "tmp"}
    steps = json.loads((tmp_path / "gpu" / "sizing.json").read_text())["next_steps"]
    assert "keeps them in the pod only" in steps[-1]  # object storage: engines per pod
    kept = deploy(repo, tmp_path / "kept", "--storage", "volume")
    mounts = {m["mountPath"]: m for m in _container(kept["Deployment"])["volumeMounts"]}
    cache = "/tmp/dcam-ort-trt-cache"  # the build's --onnx-engine-cache, on the volume now
    digest = kept["Deployment"]["spec"]["template"]["metadata"]["annotations"][
        f"{ANNOTATION}/build"
    ]
    assert mounts[cache]["subPath"] == f"ort-trt-cache/{digest}"  # per build, on the volume
    assert not mounts[cache].get("readOnly")
    assert mounts["/models"]["readOnly"]  # Triton's view of the builds stays read-only
    volumes = {v["name"]: v for v in kept["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is False
    pinned = deploy(repo, tmp_path / "pinned", "--gpu-product", "NVIDIA-L4")["Deployment"]
    assert pinned["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-L4"
    }


def test_torch_post_processing_needs_the_derived_image(onnx_repo: Path, tmp_path: Path) -> None:
    """The ensemble's post-processing with GPU inputs imports torch, which NVIDIA's images
    lack: refused on the stock image, run on the one deploy/images/ derives."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = _with_report(onnx_repo, tmp_path / "ort-trt", onnx_accelerator="tensorrt")
    path = repo / "postprocess" / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
    path.write_text(text_format.MessageToString(config))
    stock = CliRunner().invoke(build_group, ["deploy", str(repo), "--out", str(tmp_path / "x")])
    assert stock.exit_code != 0 and "torch-postprocess.Dockerfile" in stock.output
    derived = "registry.example.com/dcam/tritonserver-torch"
    objects = deploy(repo, tmp_path / "torch", "--image", derived)
    assert _container(objects["Deployment"])["image"] == f"{derived}:{DEFAULT_RELEASE}-py3"
    assert not (tmp_path / "torch" / "inferenceservice.yaml").exists()  # KServe runs NVIDIA's
    tagged = ["deploy", str(repo), "--out", str(tmp_path / "y"), "--image", f"{derived}:1"]
    assert "without tag" in CliRunner().invoke(build_group, tagged).output


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
    if target:  # plans built here, in the release's container, on an H200
        gpu = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "hardware_compatibility": "none"}
        report.update(target=target, plans="here", triton_container=DEFAULT_RELEASE, gpu=gpu)
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
    """No TensorRT here: the report of a real build is marked as plans built here in release
    26.07 on an H200, to check the GPU rules (tag, pool, node, no plan step) on a real manifest
    and configs."""
    repo = _with_report(onnx_repo, tmp_path / "trt", target="trt")
    report = json.loads((repo / "build_report.json").read_text())
    objects = deploy(repo, tmp_path / "gpu")
    container = _container(objects["Deployment"])
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pool = int(objects["ConfigMap"]["data"]["CUDA_MEMORY_POOL_BYTES"])
    batch = report["config"]["max_batch_size"]
    needed = POOL_BATCHES * batch * 2 * feature_bytes(Manifest.read(repo))
    assert needed <= pool < 2 * needed and pool & (pool - 1) == 0  # the next power of two
    service = yaml.safe_load((tmp_path / "gpu" / "inferenceservice.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert model["runtimeVersion"] == f"{DEFAULT_RELEASE}-py3"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert f"--cuda-memory-pool-byte-size=0:{pool}" in model["args"]
    assert service["spec"]["predictor"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    refused = CliRunner().invoke(
        build_group, ["deploy", str(repo), "--out", str(tmp_path / "x"), "--image-tag", "26.06-py3"]
    )
    assert refused.exit_code != 0
    assert f"built in Triton release {DEFAULT_RELEASE}" in refused.output


def test_plans_built_here_are_served_as_they_are(onnx_repo: Path, tmp_path: Path) -> None:
    """Plans built here: no build-plans, Triton on the repository itself, read-only volume,
    pinned to the GPU that built them; another product only with hardware compatibility."""
    repo = _with_report(onnx_repo, tmp_path / "trt", target="trt")
    objects = deploy(repo, tmp_path / "gpu", "--storage", "volume")
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    container = _container(objects["Deployment"])
    assert [c["name"] for c in spec["initContainers"]] == ["wait-for-repository"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert container["args"][:2] == ["tritonserver", "--model-repository=$(MODEL_REPOSITORY)"]
    assert "--cuda-memory-pool-byte-size=0:$(CUDA_MEMORY_POOL_BYTES)" in container["args"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/models", "/dev/shm", "/tmp"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(volumes) == {"models", "dshm", "tmp"}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True  # nobody writes
    other = [
        "deploy",
        str(repo),
        "--out",
        str(tmp_path / "x"),
        *BUCKET,
        "--gpu-product",
        "NVIDIA-L4",
    ]
    refused = CliRunner().invoke(build_group, other)
    assert refused.exit_code != 0 and "load only there" in refused.output
    portable = _with_report(repo, tmp_path / "ampere", target="trt")
    report = json.loads((portable / "build_report.json").read_text())
    report["gpu"]["hardware_compatibility"] = "ampere+"
    (portable / "build_report.json").write_text(json.dumps(report))
    moved = deploy(portable, tmp_path / "l4", "--gpu-product", "NVIDIA-L4")["Deployment"]
    assert (
        moved["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-L4"
    )


def test_pods_build_the_plans_of_a_pod_build(trt_pod_repo: Path, tmp_path: Path) -> None:
    """A real `--plans pod` build: the overlay keeps build-plans, in the build's release, on the
    GPU product given, with a writable volume; other releases and places are refused."""
    pod_repo = trt_pod_repo  # conftest: made here on the CPU, no TensorRT needed
    report = json.loads((pod_repo / "build_report.json").read_text())
    assert report["plans"] == "pod" and report["triton_release"] == DEFAULT_RELEASE
    assert (pod_repo / "build_plans.py").is_file() and (pod_repo / "plans.json").is_file()
    out = tmp_path / "line"
    objects = deploy(pod_repo, out, "--gpu-product", "NVIDIA-H200", "--storage", "volume")
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in spec["initContainers"]}
    init = inits["build-plans"]
    container = _container(objects["Deployment"])
    assert init["image"] == container["image"] == IMAGE
    assert 'exec python3 "$MODEL_REPOSITORY/build_plans.py"' in init["args"][2]
    assert "--model-repository=/serving/repository" in container["args"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert objects["ConfigMap"]["data"]["MODEL_REPOSITORY"].startswith("/models/builds/")
    assert objects["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    # KServe's runtime has no plan step: no InferenceService, and sizing.json says why.
    assert not (out / "inferenceservice.yaml").exists()
    assert "initContainer" in json.loads((out / "sizing.json").read_text())["kserve"]
    runner = CliRunner()
    volume = ["--storage", "volume", "--loader-image", LOADER]
    for options, message in [
        (volume, "pass --gpu-product"),
        ([*volume, "--gpu-product", "NVIDIA H200"], "not a Kubernetes label value"),
        ([*volume, "--gpu-product", "NVIDIA-H200", "--image-tag", "26.06-py3"], "26.06"),
        (["--gpu-product", "NVIDIA-H200", *BUCKET], "--plans here"),
        ([*volume, "--gpu-product", "NVIDIA-H200", "--model-repository", "/models"], "under"),
        (
            [*volume, "--gpu-product", "NVIDIA-H200", "--model-repository", "/models/plans/a"],
            "overlap",
        ),
    ]:
        result = runner.invoke(
            build_group, ["deploy", str(pod_repo), "--out", str(tmp_path / "x"), *options]
        )
        assert result.exit_code != 0 and message in result.output, options


def test_plans_from_outside_the_container_need_a_tag() -> None:
    report = {"target": "trt", "config": {}, "versions": {"tensorrt": "10.5.0"}}
    with pytest.raises(ConfigError, match="pass --image-tag"):
        image_tag(report, None)
    assert image_tag(report, "26.07-py3") == "26.07-py3"


def test_refuses_the_embedded_target_and_existing_files(
    ensemble_repo: Path, onnx_repo: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(build_group, ["deploy", str(ensemble_repo), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--target onnx" in result.output
    deploy(onnx_repo, tmp_path / "line")
    again = ["deploy", str(onnx_repo), "--out", str(tmp_path / "line"), *BUCKET]
    result = runner.invoke(build_group, again)
    assert result.exit_code != 0 and "--force" in result.output
    forced = [*again, "--force"]
    assert runner.invoke(build_group, forced).exit_code == 0
