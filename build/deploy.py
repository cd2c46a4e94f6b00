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
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from dcam.build import images
from dcam.build.deploy_gpu import (
    GPU_PRODUCT,
    GPU_REPOSITORY,
    MOUNT,
    check_plan_cache,
    gpu_product,
    serving_args,
)
from dcam.build.kserve import inference_service, kserve_refusal, volume_uri
from dcam.build.releases import DEFAULT_RELEASE, release
from dcam.build.report import REPORT_FILE, read_build_report
from dcam.build.sizing import plans_in_pod, runs_on_gpu, sizing
from dcam.core.errors import ConfigError, OutputExistsError
from dcam.core.files import write_atomic, write_json_atomic
from dcam.core.manifest import FILENAME as MANIFEST_FILE
from dcam.core.manifest import Manifest
from dcam.core.names import ENSEMBLE_MODEL
from dcam.serve.compat import read_configs

# deploy/ in the source checkout: dcam's subpackages are the checkout's top-level folders.
DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy"
OVERLAYS = {False: "overlays/cpu", True: "overlays/gpu"}  # by whether the networks use a GPU
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
# NVIDIA's stock image serves every layout on CPU and GPU alike; only the ensemble layout's GPU
# post-processing needs torch, and an image derived from it (build/images.py).
IMAGE_VARIANT = "py3"
OBJECT_STORES = ("s3://", "gs://", "as://")  # repositories Triton reads without a volume
VOLUME, CLAIM = "models", "dcam-models"  # deploy/base's model volume, mounted at MOUNT
# The overlays' MODEL_REPOSITORY: on GPUs a folder of the volume, since the plans are kept
# beside it (PLAN_CACHE) and build_plans.py copies the repository into the cache.
REPOSITORY = {False: MOUNT, True: GPU_REPOSITORY}
INIT_CONTAINER, SERVING_VOLUME, SERVING_MOUNT = "build-plans", "serving", "/serving"
DEPLOYMENT, CONFIG_MAP, CONTAINER = "dcam-triton", "dcam-triton", "tritonserver"
ANNOTATION = "dcam.ai"


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
