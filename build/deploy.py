"""`dcam-build deploy`: a Kustomize overlay for one built repository, and the KServe
InferenceService as its alternative (build/kserve.py), so nothing in deploy/ is edited by hand.
The image tag, model name, input size and resource figures come from the repository's
`build_report.json`, `manifest.json` and model configs.

The overlay builds on `deploy/overlays/gpu` when the networks run on a GPU (TensorRT plans, or
`--target onnx` with a GPU accelerator) and on `deploy/overlays/cpu` otherwise. On a GPU it pins
the nodes' GPU product, and keeps the overlay's `build-plans` initContainer only for plans the
pod builds (`--plans pod`); other GPU builds are served from the volume as they are. It also
stamps the pod template with a digest of the build. A new build then changes the template, which
makes the Deployment roll out (deploy/README.md, "Rolling updates").
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from dcam.build import images
from dcam.build.config import networks_on_gpu
from dcam.build.kserve import inference_service, kserve_refusal, volume_uri
from dcam.build.releases import DEFAULT_RELEASE, release
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
# NVIDIA's stock image serves every layout on CPU and GPU alike; only the ensemble layout's GPU
# post-processing needs torch, and an image derived from it (build/images.py).
IMAGE_VARIANT = "py3"
OBJECT_STORES = ("s3://", "gs://", "as://")  # repositories Triton reads without a volume
VOLUME, MOUNT, CLAIM = "models", "/models", "dcam-models"  # deploy/base's model volume
# The overlays' MODEL_REPOSITORY: on GPUs a folder of the volume, since the plans are kept
# beside it (PLAN_CACHE) and build_plans.py copies the repository into the cache.
REPOSITORY = {False: MOUNT, True: f"{MOUNT}/repository"}
PLAN_CACHE = f"{MOUNT}/plans"  # the GPU overlay's `build-plans --cache`
INIT_CONTAINER, SERVING_VOLUME, SERVING_MOUNT = "build-plans", "serving", "/serving"
GPU_PRODUCT = "nvidia.com/gpu.product"  # set by NVIDIA's GPU feature discovery
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
DEPLOYMENT, CONFIG_MAP, CONTAINER = "dcam-triton", "dcam-triton", "tritonserver"
ANNOTATION = "dcam.ai"

# Host memory, MiB. Measured on the CPU in the soak (benchmarks/results/soak-20261130.md):
# tritonserver held about 240 MiB and a Python-backend stub about 190 MiB at rest.
CPU_BASE_MIB = 512
# Estimated, never run: CUDA's and TensorRT's libraries in tritonserver, and PyTorch in the
# post-processing stub where a derived image carries it.
GPU_BASE_MIB = 4096
# Under plans/ on the volume, per GPU model and release the pods ran on: a copy of the
# repository and a plan per graph (about the size of its FP16 graph); one such copy counted.
PLAN_COPIES = 2
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
    # MODEL_REPOSITORY: a path on the volume, s3:// or gs://; default: the overlay's (REPOSITORY)
    model_repository: str | None = None
    image_tag: str | None = None  # default: the release the build names (image_tag)
    # A name without tag to run instead of NVIDIA's, e.g. built from
    # deploy/images/torch-postprocess.Dockerfile (the ensemble layout's GPU post-processing).
    image: str | None = None
    # The nodes' nvidia.com/gpu.product; default: the GPU the plans were built on, if known.
    gpu_product: str | None = None
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
        return (self.model_repository or "").startswith(OBJECT_STORES)

    def repository(self, gpu: bool) -> str:
        return self.model_repository or REPOSITORY[gpu]


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


def plans_in_pod(report: dict) -> bool:
    """TensorRT graphs whose plans the serving pod builds (`--plans pod`); reports from before
    the choice existed had their plans built where the build ran."""
    return report["target"] == "trt" and report.get("plans", "here") == "pod"


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
    copies = 1 + (PLAN_COPIES if plans_in_pod(report) else 0)
    return Sizing(
        cpu=None if gpu else str(max(threads, 1)),
        memory_request_mib=request,
        memory_limit_mib=_round_up(request * 1.5, 256),
        cuda_pool_bytes=1 << math.ceil(math.log2(pool)) if gpu else None,
        # room for the next version
        storage_gib=max(1, math.ceil(2 * copies * size / (1 << 30))),
    )


def image_tag(report: dict, requested: str | None) -> str:
    """The Triton container tag: plans load only in the release whose TensorRT built them, and
    graphs left to the pod were given the FP16 route of their release's TensorRT."""
    if report["target"] != "trt":
        return requested or f"{report.get('triton_release', DEFAULT_RELEASE)}-{IMAGE_VARIANT}"
    if plans_in_pod(report):
        prepared_for = report["triton_release"]
        if requested and not requested.startswith(f"{prepared_for}-"):
            raise ConfigError(
                f"the graphs were prepared for Triton release {prepared_for}, whose TensorRT "
                f"{release(prepared_for).tensorrt_major} decided their FP16 route, and the pods "
                f"build their plans in that image; --image-tag {requested} is another release: "
                f"build again with --triton-release {requested.split('-')[0]}"
            )
        return requested or f"{prepared_for}-{IMAGE_VARIANT}"
    built_in = report.get("triton_container")
    if built_in is None and requested is None:
        raise ConfigError(
            "these TensorRT plans were not built inside NVIDIA's Triton container, so the "
            "release that can run them is unknown: pass --image-tag with the release whose "
            f"TensorRT ({report['versions'].get('tensorrt', '?')}) built them, e.g. "
            f"{DEFAULT_RELEASE}-{IMAGE_VARIANT}"
        )
    if built_in and requested and not requested.startswith(f"{built_in}-"):
        raise ConfigError(
            f"the plans were built in Triton release {built_in}; --image-tag {requested} would "
            "run them on another TensorRT, which refuses them"
        )
    return requested or f"{built_in}-{IMAGE_VARIANT}"


def image_name(configs: dict, requested: str | None) -> str | None:
    """The image to run instead of NVIDIA's stock one: required where no stock variant serves
    the models (the ensemble layout's GPU post-processing imports torch)."""
    if requested is None and images.stock_variant(configs) is None:
        raise ConfigError(
            f"NVIDIA's {TRITON_IMAGE} lacks what these models need "
            f"({'; '.join(images.unmet(configs, IMAGE_VARIANT))}): build and push the image "
            f"{images.DERIVED_IMAGE} derives and pass it as --image, or build the repository "
            "with --layout fused (numpy only)"
        )
    if requested and re.search(r"[:@]", requested.rsplit("/", 1)[-1]):
        raise ConfigError(
            f"--image {requested}: give the name without tag or digest; the tag follows the "
            "build (--image-tag)"
        )
    return requested


def label_value(value: str) -> str:
    if not LABEL_VALUE.fullmatch(value):
        raise ConfigError(
            f"{value!r} is not a Kubernetes label value; GPU feature discovery labels the "
            f"nodes {GPU_PRODUCT}=<NVML's GPU name, dashes for spaces>, e.g. NVIDIA-H200 "
            f"(kubectl get nodes -L {GPU_PRODUCT})"
        )
    return value


def gpu_product(report: dict, requested: str | None) -> str | None:
    """The nvidia.com/gpu.product the pods run on; None: any GPU (ONNX Runtime builds its
    engines when the model loads)."""
    if report["target"] != "trt":
        return label_value(requested) if requested else None
    if plans_in_pod(report):
        if not requested:
            raise ConfigError(
                "the pods build their plans for the GPU they run on, and they should all run "
                f"on one GPU model: pass --gpu-product, the nodes' {GPU_PRODUCT} label "
                f"(kubectl get nodes -L {GPU_PRODUCT})"
            )
        return label_value(requested)
    gpu = report.get("gpu") or {}
    built_on = gpu["gpu"].replace(" ", "-") if gpu.get("gpu") else None
    portable = gpu.get("hardware_compatibility", "none") != "none"
    if requested and built_on and requested != built_on and not portable:
        raise ConfigError(
            f"the plans were built on {gpu['gpu']} ({GPU_PRODUCT}={built_on}) without hardware "
            f"compatibility and load only there, not on {requested}: build them on that GPU, "
            "or with --plans pod"
        )
    if not (requested or built_on):
        raise ConfigError(
            f"the build report names no GPU for these plans: pass --gpu-product, the {GPU_PRODUCT} "
            "label of the GPU model that built them"
        )
    return label_value(requested or built_on)


def serving_args(deploy_dir: Path) -> list[str]:
    """The GPU overlay's tritonserver arguments, reading the repository itself (no link)."""
    patch = yaml.safe_load((deploy_dir / OVERLAYS[True] / "gpu.yaml").read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if not a.startswith("--model-repository=")]
    if len(args) != len(container["args"]) - 1:
        raise ConfigError(f"{deploy_dir}/overlays/gpu/gpu.yaml sets no single --model-repository")
    return ["--model-repository=$(MODEL_REPOSITORY)", *args]


def check_plan_cache(repository: str, in_object_storage: bool) -> None:
    """The pod builds plans from a repository on the volume into PLAN_CACHE beside it."""
    where, cache = Path(repository), Path(PLAN_CACHE)
    if in_object_storage or not where.is_relative_to(MOUNT):
        raise ConfigError(
            f"the pods build their plans from the repository on the model volume ({MOUNT}), "
            f"not from {repository}: pass --model-repository {REPOSITORY[True]}, or build the "
            "plans with --plans here"
        )
    if where.is_relative_to(cache) or cache.is_relative_to(where):
        raise ConfigError(
            f"--model-repository {repository} and the plan cache {PLAN_CACHE} overlap (the "
            f"cache holds copies of the repository): use a folder such as {REPOSITORY[True]}"
        )


def pod_patch(cfg: DeployConfig, report: dict, resources: dict, annotations: dict) -> dict:
    """The Deployment patch: this build's figures, and on GPUs its node and plan step."""
    pod: dict = {}
    container: dict = {"name": CONTAINER, "resources": resources}
    volumes: list[dict] = []
    mounts: list[dict] = []
    if cfg.in_object_storage:
        volumes.append({"name": VOLUME, "$patch": "delete"})
        mounts.append({"mountPath": MOUNT, "$patch": "delete"})
    if runs_on_gpu(report):
        # None removes the overlay's placeholder (kustomize's strategic merge).
        pod["nodeSelector"] = {GPU_PRODUCT: gpu_product(report, cfg.gpu_product)}
        if plans_in_pod(report):
            check_plan_cache(cfg.repository(True), cfg.in_object_storage)
        else:  # nothing to build: Triton serves the repository, read-only, as in the base
            pod["initContainers"] = [{"name": INIT_CONTAINER, "$patch": "delete"}]
            volumes.append({"name": SERVING_VOLUME, "$patch": "delete"})
            mounts.append({"mountPath": SERVING_MOUNT, "$patch": "delete"})
            if not cfg.in_object_storage:
                claim = {"claimName": CLAIM, "readOnly": True}
                volumes.append({"name": VOLUME, "persistentVolumeClaim": claim})
            container["args"] = serving_args(Path(cfg.deploy_dir))
    elif cfg.gpu_product:
        raise ConfigError("--gpu-product applies to builds whose networks run on a GPU")
    pod.update({"volumes": volumes} if volumes else {})
    container.update({"volumeMounts": mounts} if mounts else {})
    template = {
        "metadata": {"annotations": annotations},
        "spec": {**pod, "containers": [container]},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT},
        "spec": {"template": template},
    }


def build_digest(repo: Path) -> str:
    """A short digest of the build report and manifest: changes with every build."""
    digest = hashlib.sha256()
    for name in (REPORT_FILE, MANIFEST_FILE):
        digest.update((repo / name).read_bytes())
    return digest.hexdigest()[:16]


def _overlay(cfg: DeployConfig, report: dict) -> Path:
    repo = Path(cfg.repo)
    if report["target"] not in ("onnx", "trt"):
        raise ConfigError(
            f"{repo} was built with --target {report['target']}, for the embedded server's "
            "Python backend; NVIDIA's container serves --target onnx (CPU) or --target trt (GPU)"
        )
    overlay = Path(cfg.deploy_dir) / OVERLAYS[runs_on_gpu(report)]
    if not (overlay / "kustomization.yaml").is_file():
        raise ConfigError(f"{overlay} is not a kustomization: pass --deploy-dir (dcam's deploy/)")
    return overlay


def overlay_files(cfg: DeployConfig) -> dict[str, dict]:
    """The overlay's kustomization, its patches and the KServe alternative, as objects."""
    repo = Path(cfg.repo)
    report, manifest = read_build_report(repo), Manifest.read(repo)
    overlay, gpu = _overlay(cfg, report), runs_on_gpu(report)
    size, (height, width) = sizing(repo, report, manifest), manifest.input_size
    resources: dict = {
        "requests": {"memory": f"{size.memory_request_mib}Mi"},
        "limits": {"memory": f"{size.memory_limit_mib}Mi"},
    }
    if size.cpu:
        resources["requests"]["cpu"] = resources["limits"]["cpu"] = size.cpu
    repository = cfg.repository(gpu)
    literals = [f"MODEL_REPOSITORY={repository}"]
    if size.cuda_pool_bytes:
        literals.append(f"CUDA_MEMORY_POOL_BYTES={size.cuda_pool_bytes}")
    annotations = {
        f"{ANNOTATION}/model": ENSEMBLE_MODEL,
        f"{ANNOTATION}/layout": report["layout"],
        f"{ANNOTATION}/input-size": f"{height}x{width}",
        f"{ANNOTATION}/max-batch-size": str(report["config"]["max_batch_size"]),
        f"{ANNOTATION}/build": build_digest(repo),
    }
    patch = pod_patch(cfg, report, resources, annotations)
    tag, name = image_tag(report, cfg.image_tag), image_name(read_configs(repo), cfg.image)
    volume = volume_patch(cfg, size.storage_gib, read_only=gpu and not plans_in_pod(report))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        **({"namespace": cfg.namespace} if cfg.namespace else {}),
        "resources": [os.path.relpath(overlay.resolve(), Path(cfg.out).resolve())],
        "images": [{"name": TRITON_IMAGE, **({"newName": name} if name else {}), "newTag": tag}],
        "replicas": [{"name": DEPLOYMENT, "count": cfg.replicas}],
        "configMapGenerator": [{"name": CONFIG_MAP, "behavior": "merge", "literals": literals}],
        "patches": [{"path": "pod.yaml"}, *([{"path": "volume.yaml"}] if volume else [])],
    }
    files = {"kustomization.yaml": kustomization, "pod.yaml": patch}
    if volume:
        files["volume.yaml"] = volume
    kserve = kserve_refusal(plans_in_pod(report), name)
    if kserve is None:
        files["inferenceservice.yaml"] = inference_service(
            Path(cfg.deploy_dir) / "kserve" / "inferenceservice.yaml",
            tag=tag,
            uri=repository if cfg.in_object_storage else volume_uri(repository, CLAIM, MOUNT),
            resources=resources,
            gpu=gpu,
            cuda_pool_bytes=size.cuda_pool_bytes,
            namespace=cfg.namespace,
            annotations={k: v for k, v in annotations.items() if k.endswith("/build")},
            node_selector=patch["spec"]["template"]["spec"].get("nodeSelector"),
        )
    sizing_json = {**asdict(size), "source": str(repo.resolve())}
    return {**files, "sizing.json": {**sizing_json, "kserve": kserve or "inferenceservice.yaml"}}


def base_storage_gib(deploy_dir: Path) -> float:
    """The model volume's size in deploy/base (e.g. 2Gi)."""
    claim = yaml.safe_load((deploy_dir / "base" / "pvc.yaml").read_text())
    size = claim["spec"]["resources"]["requests"]["storage"]
    if not size.endswith("Gi"):
        raise ConfigError(f"deploy/base/pvc.yaml asks for {size}: write it in Gi")
    return float(size.removesuffix("Gi"))


def volume_patch(cfg: DeployConfig, needed_gib: int, read_only: bool = False) -> dict | None:
    """Nothing while the base's volume is big enough (a bound claim can grow, never shrink, and
    only where its storage class allows); its deletion when the repository is in object
    storage; else a larger claim. `read_only`: back to the base's ReadOnlyMany on GPUs where no
    pod writes plans (the GPU overlay asks for ReadWriteMany)."""
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM}}
    if cfg.in_object_storage:
        return {**claim, "$patch": "delete"}
    spec: dict = {"accessModes": ["ReadOnlyMany"]} if read_only else {}
    if needed_gib > base_storage_gib(Path(cfg.deploy_dir)):
        spec["resources"] = {"requests": {"storage": f"{needed_gib}Gi"}}
    return {**claim, "spec": spec} if spec else None


OPTIONAL_FILES = ("volume.yaml", "inferenceservice.yaml")  # written for some builds only
HEADER = "# Written by `dcam-build deploy` from {repo}: build again rather than edit.\n"


def write_overlay(cfg: DeployConfig) -> dict[str, dict]:
    """Write the overlay into cfg.out; refuses to replace files there without cfg.force."""
    files = overlay_files(cfg)
    out = Path(cfg.out)
    names = dict.fromkeys([*files, *OPTIONAL_FILES])
    existing = [name for name in names if (out / name).exists()]
    if existing and not cfg.force:
        raise OutputExistsError(f"{out} already has {existing}: pass --force to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for name in set(OPTIONAL_FILES) - set(files):  # an earlier overlay's
        (out / name).unlink(missing_ok=True)
    header = HEADER.format(repo=Path(cfg.repo).resolve())
    for name, content in files.items():
        if name.endswith(".json"):
            write_json_atomic(out / name, content)
            continue
        body = (header + yaml.safe_dump(content, sort_keys=False)).encode()
        write_atomic(out / name, lambda fh, body=body: fh.write(body))
    return files
