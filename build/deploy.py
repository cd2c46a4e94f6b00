"""`dcam-build deploy`: a Kustomize overlay for one built repository, and the KServe
InferenceService as its alternative (build/kserve.py), so nothing in deploy/ is edited by hand.
The image tag, model name, input size and resource figures come from the repository's
`build_report.json`, `manifest.json` and model configs.

The overlay builds on `deploy/overlays/gpu` when the networks run on a GPU (TensorRT plans, or
`--target onnx` with a GPU accelerator) and on `deploy/overlays/cpu` otherwise. It also stamps
the pod template with a digest of the build. A new build then changes the template, which makes
the Deployment roll out (deploy/README.md, "Rolling updates").
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from dcam.build.config import networks_on_gpu
from dcam.build.kserve import inference_service, volume_uri
from dcam.build.releases import DEFAULT_RELEASE
from dcam.build.report import REPORT_FILE, read_build_report
from dcam.core.errors import ConfigError, OutputExistsError
from dcam.core.files import write_atomic, write_json_atomic
from dcam.core.manifest import FILENAME as MANIFEST_FILE
from dcam.core.manifest import Manifest
from dcam.core.names import ENSEMBLE_MODEL, ENTRY_MODELS
from dcam.serve.compat import read_configs

# deploy/ in the source checkout: dcam's subpackages are the checkout's top-level folders.
DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy"
OVERLAYS = {False: "overlays/cpu", True: "overlays/gpu"}  # by whether the networks use a GPU
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
IMAGE_VARIANT = {False: "py3", True: "pyt-python-py3"}  # see the overlays' kustomizations
OBJECT_STORES = ("s3://", "gs://", "as://")  # repositories Triton reads without a volume
VOLUME, MOUNT, CLAIM = "models", "/models", "dcam-models"  # deploy/base's model volume
DEPLOYMENT, CONFIG_MAP = "dcam-triton", "dcam-triton"
ANNOTATION = "dcam.ai"

# Host memory, MiB. Measured on the CPU in the soak (benchmarks/results/soak-20261130.md):
# tritonserver held about 240 MiB and a Python-backend stub about 190 MiB at rest.
CPU_BASE_MIB = 512
# Estimated, never run: the PyTorch the GPU image loads into the post-processing stub.
GPU_BASE_MIB = 4096
# ONNX Runtime's arena keeps the largest batch's intermediates; the stem's output alone is four
# times the layer1 map, so the three levels' maps are scaled by this per network.
ACTIVATION_FACTOR = 4
MAPS_PER_IMAGE = 4  # post-processing: per-level maps upsampled, their sum, the blurred map
# The CUDA pool carries the features between ensemble steps: two batches in flight, each
# double-buffered, per instance.
POOL_BATCHES = 4
MIB = 1 << 20


@dataclass(frozen=True)
class DeployConfig:
    """What `dcam-build deploy` writes; each field is a CLI flag."""

    repo: str
    out: str
    model_repository: str = "/models"  # MODEL_REPOSITORY: a path on the volume, s3:// or gs://
    image_tag: str | None = None  # default: the build's container release, or DEFAULT_RELEASE
    namespace: str | None = None
    replicas: int = 2
    deploy_dir: str = str(DEPLOY_DIR)
    force: bool = False

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError("replicas must be >= 1")

    @property
    def in_object_storage(self) -> bool:
        """Triton reads the repository itself (s3://, gs://, as://): no model volume."""
        return self.model_repository.startswith(OBJECT_STORES)


@dataclass(frozen=True)
class Sizing:
    """Per-pod figures the overlay sets, with how each was derived in `sizing`."""

    cpu: str | None  # None: keep the overlay's (GPU pods: decode and post-processing only)
    memory_request_mib: int
    memory_limit_mib: int
    cuda_pool_bytes: int | None
    storage_gib: int


def feature_bytes(manifest: Manifest) -> int:
    """Bytes of one network's float32 feature maps (all levels) for one image."""
    height, width = manifest.input_size
    channels, strides = manifest.data["feature_channels"], manifest.data["feature_strides"]
    return sum(
        4 * c * math.ceil(height / s) * math.ceil(width / s)
        for c, s in zip(channels, strides, strict=True)
    )


def image_models(configs: dict) -> list[str]:
    """The models that run a network: those requests enter (not post-processing)."""
    return [name for name in configs if name in ENTRY_MODELS]


def _instances(config) -> int:
    return sum(group.count for group in config.instance_group) or 1


def _threads(config) -> int:
    """ONNX Runtime's intra-op threads per instance (0 on GPU models, which set none)."""
    param = config.parameters.get("intra_op_thread_count")
    return int(param.string_value) if param is not None else 0


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def runs_on_gpu(report: dict) -> bool:
    return networks_on_gpu(report["target"], report["config"].get("onnx_accelerator", "none"))


def sizing(repo: Path, report: dict, manifest: Manifest) -> Sizing:
    """CPU: the ONNX Runtime threads the configs give each instance; memory: a base plus weights
    and the largest batch's activations; GPU: a CUDA pool for the features of full batches."""
    gpu = runs_on_gpu(report)
    if not gpu and not report["config"]["threads"]:
        raise ConfigError(
            f"{repo} was built with --threads 0, so its configs give ONNX Runtime the cores of "
            "the machine that built it, not of the pods: build it again with --threads N, the "
            "cores each network may use on a pod (the pod then asks for 2 x N)"
        )
    configs = read_configs(repo)
    models = image_models(configs)
    batch = report["config"]["max_batch_size"]
    instances = max(_instances(configs[m]) for m in models)
    nets = 2  # teacher and student, as two models or inside the fused graph
    features = feature_bytes(manifest)
    weights = sum(f.stat().st_size for m in models for f in (repo / m).rglob("model.*"))
    height, width = manifest.input_size
    per_batch = batch * (nets * ACTIVATION_FACTOR * features + MAPS_PER_IMAGE * 4 * height * width)
    base = GPU_BASE_MIB if gpu else CPU_BASE_MIB
    request = _round_up(base + (2 * weights + instances * per_batch) / MIB, 256)
    threads = sum(_threads(configs[m]) * _instances(configs[m]) for m in models)
    pool = POOL_BATCHES * instances * batch * nets * features
    size = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
    return Sizing(
        cpu=None if gpu else str(max(threads, 1)),
        memory_request_mib=request,
        memory_limit_mib=_round_up(request * 1.5, 256),
        cuda_pool_bytes=1 << math.ceil(math.log2(pool)) if gpu else None,
        storage_gib=max(1, math.ceil(2 * size / (1 << 30))),  # room for the next version
    )


def image_tag(report: dict, requested: str | None) -> str:
    """The Triton container tag: plans only run on the release whose TensorRT built them."""
    variant = IMAGE_VARIANT[runs_on_gpu(report)]
    if report["target"] != "trt":
        return requested or f"{DEFAULT_RELEASE}-{variant}"
    built_in = report.get("triton_container")
    if built_in is None and requested is None:
        raise ConfigError(
            "these TensorRT plans were not built inside NVIDIA's Triton container, so the "
            "release that can run them is unknown: pass --image-tag with the release whose "
            f"TensorRT ({report['versions'].get('tensorrt', '?')}) built them, e.g. "
            f"{DEFAULT_RELEASE}-{variant}"
        )
    if built_in and requested and not requested.startswith(f"{built_in}-"):
        raise ConfigError(
            f"the plans were built in Triton release {built_in}; --image-tag {requested} would "
            "run them on another TensorRT, which refuses them"
        )
    return requested or f"{built_in}-{variant}"


def build_digest(repo: Path) -> str:
    """A short digest of the build report and manifest: changes with every build."""
    digest = hashlib.sha256()
    for name in (REPORT_FILE, MANIFEST_FILE):
        digest.update((repo / name).read_bytes())
    return digest.hexdigest()[:16]


def overlay_files(cfg: DeployConfig) -> dict[str, dict]:
    """The overlay's kustomization and its pod patch, as objects."""
    repo = Path(cfg.repo)
    report, manifest = read_build_report(repo), Manifest.read(repo)
    if report["target"] not in ("onnx", "trt"):
        raise ConfigError(
            f"{repo} was built with --target {report['target']}, for the embedded server's "
            "Python backend; NVIDIA's container serves --target onnx (CPU) or --target trt (GPU)"
        )
    gpu = runs_on_gpu(report)
    overlay = Path(cfg.deploy_dir) / OVERLAYS[gpu]
    if not (overlay / "kustomization.yaml").is_file():
        raise ConfigError(f"{overlay} is not a kustomization: pass --deploy-dir (dcam's deploy/)")
    size, (height, width) = sizing(repo, report, manifest), manifest.input_size
    resources: dict = {
        "requests": {"memory": f"{size.memory_request_mib}Mi"},
        "limits": {"memory": f"{size.memory_limit_mib}Mi"},
    }
    if size.cpu:
        resources["requests"]["cpu"] = resources["limits"]["cpu"] = size.cpu
    literals = [f"MODEL_REPOSITORY={cfg.model_repository}"]
    if size.cuda_pool_bytes:
        literals.append(f"CUDA_MEMORY_POOL_BYTES={size.cuda_pool_bytes}")
    annotations = {
        f"{ANNOTATION}/model": ENSEMBLE_MODEL,
        f"{ANNOTATION}/layout": report["layout"],
        f"{ANNOTATION}/input-size": f"{height}x{width}",
        f"{ANNOTATION}/max-batch-size": str(report["config"]["max_batch_size"]),
        f"{ANNOTATION}/build": build_digest(repo),
    }
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": "tritonserver", "resources": resources}]},
            }
        },
    }
    volume = volume_patch(cfg, size.storage_gib)
    if cfg.in_object_storage:
        pod = patch["spec"]["template"]["spec"]
        pod["volumes"] = [{"name": VOLUME, "$patch": "delete"}]
        pod["containers"][0]["volumeMounts"] = [{"mountPath": MOUNT, "$patch": "delete"}]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        **({"namespace": cfg.namespace} if cfg.namespace else {}),
        "resources": [os.path.relpath(overlay.resolve(), Path(cfg.out).resolve())],
        "images": [{"name": TRITON_IMAGE, "newTag": image_tag(report, cfg.image_tag)}],
        "replicas": [{"name": DEPLOYMENT, "count": cfg.replicas}],
        "configMapGenerator": [{"name": CONFIG_MAP, "behavior": "merge", "literals": literals}],
        "patches": [{"path": "pod.yaml"}, *([{"path": "volume.yaml"}] if volume else [])],
    }
    files = {"kustomization.yaml": kustomization, "pod.yaml": patch}
    if volume:
        files["volume.yaml"] = volume
    files["inferenceservice.yaml"] = inference_service(
        Path(cfg.deploy_dir) / "kserve" / "inferenceservice.yaml",
        tag=kustomization["images"][0]["newTag"],
        uri=cfg.model_repository
        if cfg.in_object_storage
        else volume_uri(cfg.model_repository, CLAIM, MOUNT),
        resources=resources,
        gpu=gpu,
        cuda_pool_bytes=size.cuda_pool_bytes,
        namespace=cfg.namespace,
        annotations={k: v for k, v in annotations.items() if k.endswith("/build")},
    )
    return {**files, "sizing.json": {**asdict(size), "source": str(repo.resolve())}}


def base_storage_gib(deploy_dir: Path) -> float:
    """The model volume's size in deploy/base (e.g. 2Gi)."""
    claim = yaml.safe_load((deploy_dir / "base" / "pvc.yaml").read_text())
    size = claim["spec"]["resources"]["requests"]["storage"]
    if not size.endswith("Gi"):
        raise ConfigError(f"deploy/base/pvc.yaml asks for {size}: write it in Gi")
    return float(size.removesuffix("Gi"))


def volume_patch(cfg: DeployConfig, needed_gib: int) -> dict | None:
    """Nothing while the base's volume is big enough (a bound claim can grow, never shrink, and
    only where its storage class allows); its deletion when the repository is in object
    storage; else a larger claim."""
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM}}
    if cfg.in_object_storage:
        return {**claim, "$patch": "delete"}
    if needed_gib <= base_storage_gib(Path(cfg.deploy_dir)):
        return None
    return {**claim, "spec": {"resources": {"requests": {"storage": f"{needed_gib}Gi"}}}}


HEADER = "# Written by `dcam-build deploy` from {repo}: build again rather than edit.\n"


def write_overlay(cfg: DeployConfig) -> dict[str, dict]:
    """Write the overlay into cfg.out; refuses to replace files there without cfg.force."""
    files = overlay_files(cfg)
    out = Path(cfg.out)
    existing = [name for name in files if (out / name).exists()]
    if existing and not cfg.force:
        raise OutputExistsError(f"{out} already has {existing}: pass --force to replace them")
    out.mkdir(parents=True, exist_ok=True)
    (out / "volume.yaml").unlink(missing_ok=True)  # an earlier overlay's, if this one has none
    header = HEADER.format(repo=Path(cfg.repo).resolve())
    for name, content in files.items():
        if name.endswith(".json"):
            write_json_atomic(out / name, content)
            continue
        body = (header + yaml.safe_dump(content, sort_keys=False)).encode()
        write_atomic(out / name, lambda fh, body=body: fh.write(body))
    return files
