"""Command line: `dcam-build engines`, `dcam-build verify` and `dcam-build deploy`.

Every `engines` option maps onto a `BuildConfig` field and takes its default from there; only
this layer turns library errors into messages and exit codes (through `reports_errors`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dcam.build.config import (
    BUILDERS,
    HARDWARE_COMPATIBILITY,
    LAYOUTS,
    ONNX_ACCELERATORS,
    PLAN_STEPS,
    TARGETS,
    BuildConfig,
)
from dcam.build.deploy import DeployConfig
from dcam.build.deploy_components import AUTOSCALING, ENTRY
from dcam.build.deploy_storage import STORAGE
from dcam.build.releases import DEFAULT_RELEASE, RELEASES
from dcam.core.cli import default, reports_errors
from dcam.core.network import DEFAULT_GRPC_PORT


def _d(name: str):
    return default(BuildConfig, name)


def _deploy(name: str):
    return default(DeployConfig, name)


@click.group()
def build_group() -> None:
    """Turn a training run into a Triton model repository, and check it."""


@build_group.command("engines", context_settings={"show_default": True})
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Repository folder to write (e.g. model_repository/dcam).",
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default=_d("target"),
    help="trt: FP16 TensorRT engines (GPU); cpu: ONNX Runtime in Triton's Python "
    "backend (the embedded server); onnx: Triton's ONNX Runtime backend (NVIDIA's "
    "containers); auto: trt where TensorRT and a GPU are present.",
)
@click.option(
    "--onnx-accelerator",
    type=click.Choice(ONNX_ACCELERATORS),
    default=_d("onnx_accelerator"),
    help="--target onnx on a GPU: tensorrt builds FP16 engines at load through ONNX Runtime.",
)
@click.option(
    "--onnx-engine-cache",
    default=_d("onnx_engine_cache"),
    help="Where ONNX Runtime caches the engines it builds (a volume that outlives the pod).",
)
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default=_d("layout"),
    help="ensemble: teacher || student -> postprocess; fused: one graph -> calibrate; auto: "
    "fused on a GPU (the stock -py3 image serves it), else ensemble.",
)
@click.option(
    "--triton-release",
    type=click.Choice(list(RELEASES)),
    default=_d("triton_release"),
    help="The Triton container release that serves the build: its TensorRT picks the FP16 "
    "route and must build the plans.",
)
@click.option(
    "--plans",
    type=click.Choice(PLAN_STEPS),
    default=_d("plans"),
    help="--target trt: here builds and checks the plans now (TensorRT and the serving GPU "
    "here); pod writes the graphs and build_plans.py for the serving image to build them.",
)
@click.option(
    "--hardware-compatibility",
    type=click.Choice(HARDWARE_COMPATIBILITY),
    default=_d("hardware_compatibility"),
    help="TensorRT plans for this GPU model only (none), any Ampere or newer GPU (ampere+: "
    "fewer tactics, slower) or this compute capability (same-cc).",
)
@click.option("--max-batch-size", type=int, default=_d("max_batch_size"))
@click.option(
    "--opt-batch-size",
    type=int,
    default=_d("opt_batch_size"),
    help="TensorRT profile optimum and Triton's preferred batch size.",
)
@click.option("--min-batch-size", type=int, default=_d("min_batch_size"))
@click.option(
    "--queue-delay-us", type=int, default=_d("queue_delay_us"), help="Dynamic batching delay."
)
@click.option(
    "--queue-timeout-ms",
    type=int,
    default=_d("queue_timeout_ms"),
    help="Reject a request that waited this long in an image-taking model's queue (0: never; "
    "default: 3000 for trt and onnx, never on the embedded server, whose batcher stalls with "
    "a queue policy).",
)
@click.option(
    "--max-queue-size",
    type=int,
    default=_d("max_queue_size"),
    help="Reject requests beyond this many queued (0: unbounded; default: 4 full batches per "
    "instance for trt and onnx on a release with the ensemble fix, else unbounded; the "
    "embedded 2.51 crashes on it, so dcam-serve refuses it).",
)
@click.option("--instances", type=int, default=_d("instances"), help="Instances per model.")
@click.option(
    "--threads",
    type=int,
    default=_d("threads"),
    help="ONNX Runtime threads per session (0: cores / concurrent sessions).",
)
@click.option(
    "--workspace-mib", type=int, default=_d("workspace_mib"), help="TensorRT builder workspace."
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=_d("timing_cache"),
    help="TensorRT timing cache (default: OUT.timing.cache).",
)
@click.option(
    "--builder",
    type=click.Choice(BUILDERS),
    default=_d("builder"),
    help="TensorRT Python API or trtexec.",
)
@click.option(
    "--tolerance",
    type=float,
    default=_d("tolerance"),
    help="Max relative error ONNX Runtime vs PyTorch.",
)
@click.option(
    "--fp16-tolerance",
    type=float,
    default=_d("fp16_tolerance"),
    help="Max relative error of FP16 engines vs ONNX Runtime FP32.",
)
@click.option("--opset", type=int, default=_d("opset"))
@click.option(
    "--line-metrics/--no-line-metrics",
    default=_d("line_metrics"),
    help="Per-product counts, score histograms and drift on Triton's metrics port.",
)
@click.option(
    "--drift-window",
    type=int,
    default=_d("drift_window"),
    help="Images per product, under its calibrated threshold, the drift PSI is over.",
)
@click.option(
    "--drift-bins", type=int, default=_d("drift_bins"), help="Equal-probability bins of the PSI."
)
@click.option(
    "--drift-alarm",
    type=float,
    default=_d("drift_alarm"),
    help="PSI at or above which a product's drift alarm is on (core/drift.py explains 0.5).",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@reports_errors
def engines_command(**options) -> None:
    """Export ONNX, simplify, check, build engines and write the model repository."""
    from dcam.build.engines import build_repository, worst_errors  # deferred: torch is slow

    report = build_repository(BuildConfig(**options))
    for name, err in worst_errors(report).items():
        click.echo(f"{name}: ONNX Runtime vs PyTorch max relative error {err:.2e}")
    click.echo(
        f"wrote {options['out']} ({report['target']}, {report['layout']}) "
        f"in {report['seconds']:.1f} s"
    )


@build_group.command("verify", context_settings={"show_default": True})
@click.argument("repo", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Training run to compare with (default: the one the build recorded).",
)
@click.option("--tolerance", type=float, default=_d("tolerance"), help="Max relative map error.")
@reports_errors
def verify_command(repo: str, run_dir: str | None, tolerance: float) -> None:
    """Serve REPO with the embedded tritonserver and compare it with the PyTorch reference."""
    from dcam.build.verify import verify_repository

    report = verify_repository(Path(repo), Path(run_dir) if run_dir else None, tolerance)
    click.echo(json.dumps(report["results"], indent=1))
    click.echo(f"verify: {report['checked']}")


@build_group.command("deploy", context_settings={"show_default": True})
@click.argument("repo", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(), help="Folder for the overlay.")
@click.option(
    "--storage",
    type=click.Choice(STORAGE),
    default=_deploy("storage"),
    help="Where builds live: object storage Triton reads itself, or a ReadWriteMany volume "
    "filled by a loader Job (needed when the pods build their plans).",
)
@click.option(
    "--model-repository",
    default=_deploy("model_repository"),
    help="Where builds go, one folder per build digest: a bucket prefix (s3://, gs://, as://; "
    "required with --storage object) or a folder of the volume (default /models/builds).",
)
@click.option(
    "--loader-image",
    default=_deploy("loader_image"),
    help="--storage volume: the loader image's name in your registry (no tag; the tag is the "
    "build digest). Build it from the overlay's repository.Dockerfile.",
)
@click.option(
    "--autoscaling",
    type=click.Choice(list(AUTOSCALING)),
    default=_deploy("autoscaling"),
    help="Scale on Triton's queue time: hpa (prometheus-adapter) or keda; none: --replicas.",
)
@click.option(
    "--entry",
    type=click.Choice(list(ENTRY)),
    default=_deploy("entry"),
    help="A gRPC entry for line PCs outside the cluster: a Gateway API GRPCRoute, or an "
    "ingress-nginx Ingress (deploy/README.md).",
)
@click.option(
    "--tls",
    is_flag=True,
    help="gRPC over TLS and the control APIs behind a key, from the Secrets dcam-triton-tls "
    "and dcam-api-key.",
)
@click.option(
    "--monitoring",
    is_flag=True,
    help="Add the PodMonitor, alert rules and Grafana dashboard (needs the Prometheus Operator).",
)
@click.option(
    "--prometheus-release",
    default=_deploy("prometheus_release"),
    help="With --monitoring: the Helm release of kube-prometheus-stack, whose selectors pick "
    "resources labelled release=<it>.",
)
@click.option(
    "--image-tag",
    default=None,
    help="Triton container tag (default: the release the plans were built in, or the "
    f"release the build names, e.g. {DEFAULT_RELEASE}-py3).",
)
@click.option(
    "--image",
    default=_deploy("image"),
    help="Image name (no tag) to run instead of NVIDIA's, e.g. one built from "
    "deploy/images/torch-postprocess.Dockerfile.",
)
@click.option(
    "--gpu-product",
    default=_deploy("gpu_product"),
    help="The GPU nodes' nvidia.com/gpu.product label, e.g. NVIDIA-H200 (default: the GPU "
    "the plans were built on; needed for --plans pod).",
)
@click.option("--namespace", default=None, help="Namespace for every object.")
@click.option(
    "--replicas", type=int, default=_deploy("replicas"), help="Replicas (without --autoscaling)."
)
@click.option(
    "--deploy-dir",
    type=click.Path(file_okay=False, exists=True),
    default=_deploy("deploy_dir"),
    help="dcam's deploy/ folder, whose overlays the new one builds on.",
)
@click.option("--force", is_flag=True, help="Replace the overlay's files in OUT.")
@reports_errors
def deploy_command(**options) -> None:
    """Write a Kustomize overlay for REPO, its figures read from the build (apply with
    `kubectl apply -k OUT`)."""
    from dcam.build.deploy import write_overlay

    files = write_overlay(DeployConfig(**options))
    size = files["sizing.json"]
    image = files["kustomization.yaml"]["images"][0]  # Triton's; then the loader's
    click.echo(
        f"wrote {options['out']}: image tag {image['newTag']}, memory "
        f"{size['memory_request_mib']}-{size['memory_limit_mib']} MiB"
        + (f", {size['cpu']} CPU" if size["cpu"] else "")
        + (f", CUDA pool {size['cuda_pool_bytes'] >> 20} MiB" if size["cuda_pool_bytes"] else "")
    )
    click.echo(f"the build's folder: {size['repository']}")
    for step in size["next_steps"]:
        click.echo(step)
    click.echo(f"apply with: kubectl apply -k {options['out']}")
    if "inferenceservice.yaml" in files:
        kserve = f"{options['out']}/inferenceservice.yaml"
        click.echo(f"or, on KServe instead: kubectl apply -f {kserve}")
    else:
        click.echo(f"no KServe alternative: {size['kserve']}")
    namespace = options["namespace"] or "<namespace>"
    pods = f"dcam-triton-pods.{namespace}.svc:{DEFAULT_GRPC_PORT}"
    click.echo(f"score with: dcam-client score --url dns:///{pods}")
