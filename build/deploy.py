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
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from dcam.build import deploy_components, deploy_storage
from dcam.build.deploy_components import AUTOSCALING, keda_namespace_patch
from dcam.build.deploy_gpu import (
    GPU_PRODUCT,
    MOUNT,
    engine_cache,
    engine_cache_patch,
    gpu_product,
    serving_args_patch,
)
from dcam.build.deploy_storage import LOADER_JOB
from dcam.build.images import TRITON_IMAGE, image_name, image_tag
from dcam.build.kserve import inference_service, kserve_refusal, volume_uri
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
VOLUME, CLAIM = "models", "dcam-models"  # components/volume's model volume, mounted at MOUNT
INIT_CONTAINER, SERVING_VOLUME, SERVING_MOUNT = "build-plans", "serving", "/serving"
DEPLOYMENT, CONFIG_MAP, CONTAINER = "dcam-triton", "dcam-triton", "tritonserver"
ANNOTATION = "dcam.ai"


@dataclass(frozen=True)
class DeployConfig:
    """What `dcam-build deploy` writes; each field is a CLI flag."""

    repo: str
    out: str
    # Where builds live: object storage (a bucket prefix in model_repository), or the volume
    # (model_repository: a folder under /models; default /models/builds). One folder per build.
    storage: str = "object"
    model_repository: str | None = None
    loader_image: str | None = None  # --storage volume: the loader image's name (no tag)
    image_tag: str | None = None  # default: the release the build names (image_tag)
    # A name without tag to run instead of NVIDIA's, e.g. built from
    # deploy/images/torch-postprocess.Dockerfile (the ensemble layout's GPU post-processing).
    image: str | None = None
    # The nodes' nvidia.com/gpu.product; default: the GPU the plans were built on, if known.
    gpu_product: str | None = None
    namespace: str | None = None
    replicas: int = 2  # without autoscaling; with it, the autoscaler's minimum
    autoscaling: str = "none"  # none, hpa (prometheus-adapter) or keda
    entry: str = "none"  # for line PCs outside the cluster: gateway (GRPCRoute), ingress-nginx
    tls: bool = False  # gRPC over TLS and the locked control APIs (Secrets: deploy/README.md)
    monitoring: bool = False  # PodMonitor, alert rules and dashboard (Prometheus Operator)
    prometheus_release: str = "kube-prometheus-stack"  # the label its selectors look for
    deploy_dir: str = str(DEPLOY_DIR)
    force: bool = False

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError("replicas must be >= 1")
        if self.autoscaling not in AUTOSCALING:
            raise ConfigError(f"--autoscaling {self.autoscaling}: choose {', '.join(AUTOSCALING)}")


def pod_patch(
    cfg: DeployConfig, report: dict, resources: dict, annotations: dict, volume: bool
) -> dict:
    """The Deployment patch: this build's figures, and on GPUs its node and plan step.
    `volume`: the repository is on the model volume (else object storage)."""
    pod: dict = {}
    container: dict = {"name": CONTAINER, "resources": resources}
    volumes: list[dict] = []
    mounts: list[dict] = []
    inits: list[dict] = []
    gpu = runs_on_gpu(report)
    if gpu and not volume:  # the GPU overlay's components/volume, taken out again
        volumes.append({"name": VOLUME, "$patch": "delete"})
        mounts.append({"mountPath": MOUNT, "$patch": "delete"})
        inits.append({"name": "wait-for-repository", "$patch": "delete"})
    if gpu:
        pod["nodeSelector"] = {GPU_PRODUCT: gpu_product(report, cfg.gpu_product)}
        if not plans_in_pod(report):  # nothing to build: Triton serves the repository as is
            inits.append({"name": INIT_CONTAINER, "$patch": "delete"})
            volumes.append({"name": SERVING_VOLUME, "$patch": "delete"})
            mounts.append({"mountPath": SERVING_MOUNT, "$patch": "delete"})
            if volume:  # nobody writes the volume now: read-only, as Triton's own mount
                claim = {"claimName": CLAIM, "readOnly": True}
                volumes.append({"name": VOLUME, "persistentVolumeClaim": claim})
    elif cfg.gpu_product:
        raise ConfigError("--gpu-product applies to builds whose networks run on a GPU")
    cache_mounts, cache_volumes = engine_cache_patch(
        report, volume, annotations[f"{ANNOTATION}/build"]
    )
    if cache_volumes:  # the claim writable for the cache mount: it replaces a read-only one
        volumes = [v for v in volumes if v["name"] != VOLUME or "$patch" in v]
    mounts += cache_mounts
    volumes += cache_volumes
    pod.update({"initContainers": inits} if inits else {})
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


def _relative(cfg: DeployConfig, folder: Path) -> str:
    return os.path.relpath(folder.resolve(), Path(cfg.out).resolve())


def kustomization(
    cfg: DeployConfig,
    overlay: Path,
    store: deploy_storage.Storage,
    gpu: bool,
    images_: list,
    cuda_pool_bytes: int | None,
    plans: bool,
) -> dict:
    """The overlay's kustomization: the base overlay, the components this deployment uses, the
    images, the replica count (none under an autoscaler), the build's folder and patches."""
    deploy_dir = Path(cfg.deploy_dir)
    literals = [f"MODEL_REPOSITORY={store.repository}"]
    if cuda_pool_bytes:
        literals.append(f"CUDA_MEMORY_POOL_BYTES={cuda_pool_bytes}")
    components = deploy_components.chosen(
        store.volume and not gpu, cfg.autoscaling, cfg.entry, cfg.tls, cfg.monitoring
    )
    patches: list[dict] = [{"path": "pod.yaml"}]
    if store.volume:
        patches.append({"path": "loader.yaml", "target": {"kind": "Job", "name": LOADER_JOB}})
    patches += [
        {"patch": yaml.safe_dump(d)}
        for d in deploy_storage.without_volume(gpu and not store.volume)
    ]
    if gpu and not plans:  # Triton reads the repository itself: no link from build-plans
        target = {"kind": "Deployment", "name": DEPLOYMENT}
        patches.append({"patch": yaml.safe_dump(serving_args_patch(deploy_dir)), "target": target})
    if cfg.autoscaling == "keda":
        patches.append(keda_namespace_patch(deploy_dir, cfg.namespace))
    if cfg.monitoring:
        patches += deploy_components.release_label_patches(cfg.prometheus_release)
    if cfg.tls and cfg.entry == "ingress-nginx":
        patches.append(deploy_components.ingress_tls_patch())
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        **({"namespace": cfg.namespace} if cfg.namespace else {}),
        "resources": [_relative(cfg, overlay)],
        **(
            {"components": [_relative(cfg, deploy_dir / c) for c in components]}
            if components
            else {}
        ),
        "images": images_,
        **(
            {"replicas": [{"name": DEPLOYMENT, "count": cfg.replicas}]}
            if cfg.autoscaling == "none"
            else {}
        ),
        "configMapGenerator": [{"name": CONFIG_MAP, "behavior": "merge", "literals": literals}],
        "patches": patches,
    }


def overlay_files(cfg: DeployConfig) -> dict[str, dict | str]:
    """The overlay's kustomization, its patches, the loader image's Dockerfile (volume) and the
    KServe alternative: objects, or text for the Dockerfile."""
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
    tag, name = image_tag(report, cfg.image_tag), image_name(read_configs(repo), cfg.image)
    digest = build_digest(repo)
    store = deploy_storage.storage(cfg.storage, cfg.model_repository, digest, plans_in_pod(report))
    if store.volume and not cfg.loader_image:
        raise ConfigError(
            "--storage volume: pass --loader-image with your registry's name for the loader "
            "image (e.g. registry.example.com/dcam-repository), which the cluster pulls"
        )
    annotations = {
        f"{ANNOTATION}/model": ENSEMBLE_MODEL,
        f"{ANNOTATION}/layout": report["layout"],
        f"{ANNOTATION}/input-size": f"{height}x{width}",
        f"{ANNOTATION}/max-batch-size": str(report["config"]["max_batch_size"]),
        f"{ANNOTATION}/build": digest,
    }
    patch = pod_patch(cfg, report, resources, annotations, store.volume)
    if not store.volume:  # Triton copies an object-store repository into /tmp before loading
        tmp = {"name": "tmp", "emptyDir": {"sizeLimit": f"{size.storage_gib + 2}Gi"}}
        patch["spec"]["template"]["spec"].setdefault("volumes", []).append(tmp)
    images_ = [{"name": TRITON_IMAGE, **({"newName": name} if name else {}), "newTag": tag}]
    if store.volume:
        images_.append(store.loader_image(cfg.loader_image))
    kustomize = kustomization(
        cfg, overlay, store, gpu, images_, size.cuda_pool_bytes, plans_in_pod(report)
    )
    files: dict = {"kustomization.yaml": kustomize, "pod.yaml": patch}
    if store.volume:
        files["loader.yaml"] = deploy_storage.loader_patch(store)
        files["repository.Dockerfile"] = deploy_storage.dockerfile()
        volume = deploy_storage.volume_patch(Path(cfg.deploy_dir), size.storage_gib)
        if volume:
            files["volume.yaml"] = volume
            kustomize["patches"].append({"path": "volume.yaml"})
    uri = volume_uri(store.repository, CLAIM, MOUNT) if store.volume else store.repository
    kserve = kserve_refusal(plans_in_pod(report), name)
    if kserve is None:
        files["inferenceservice.yaml"] = inference_service(
            Path(cfg.deploy_dir) / "kserve" / "inferenceservice.yaml",
            tag=tag,
            uri=uri,
            resources=resources,
            gpu=gpu,
            cuda_pool_bytes=size.cuda_pool_bytes,
            namespace=cfg.namespace,
            annotations={k: v for k, v in annotations.items() if k.endswith("/build")},
            node_selector=patch["spec"]["template"]["spec"].get("nodeSelector"),
        )
    sizing_json = {
        **asdict(size),
        "source": str(repo.resolve()),
        "repository": store.repository,
        "next_steps": store.next_steps(repo, cfg.loader_image, Path(cfg.out))
        + ([ENGINES_REBUILT] if engine_cache(report) and not store.volume else []),
    }
    return {**files, "sizing.json": {**sizing_json, "kserve": kserve or "inferenceservice.yaml"}}


ENGINES_REBUILT = (
    "note: ONNX Runtime builds its TensorRT engines when each pod loads (minutes) and, without "
    "the volume, keeps them in the pod only: --storage volume keeps them, --target trt prebuilds"
)
# Written for some builds only.
OPTIONAL_FILES = ("volume.yaml", "loader.yaml", "repository.Dockerfile", "inferenceservice.yaml")
HEADER = "# Written by `dcam-build deploy` from {repo}: build again rather than edit.\n"


def write_overlay(cfg: DeployConfig) -> dict[str, dict | str]:
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
        text = (
            content
            if isinstance(content, str)
            else header + yaml.safe_dump(content, sort_keys=False)
        )
        body = text.encode()
        write_atomic(out / name, lambda fh, body=body: fh.write(body))
    return files
