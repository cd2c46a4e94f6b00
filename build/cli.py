"""Command line: `dcam-build engines` and `dcam-build verify`.

Only this layer turns library errors into messages and exit codes.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dcam.build.config import BUILDERS, LAYOUTS, TARGETS
from dcam.training.errors import DcamError


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
    default="auto",
    help="trt: FP16 TensorRT engines (GPU); cpu: ONNX Runtime in Triton's Python "
    "backend; auto: trt where TensorRT and a GPU are present.",
)
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="ensemble",
    help="ensemble: teacher || student -> postprocess; fused: one graph.",
)
@click.option("--max-batch-size", type=int, default=32)
@click.option(
    "--opt-batch-size",
    type=int,
    default=8,
    help="TensorRT profile optimum and Triton's preferred batch size.",
)
@click.option("--min-batch-size", type=int, default=1)
@click.option("--queue-delay-us", type=int, default=2000, help="Dynamic batching queue delay.")
@click.option("--instances", type=int, default=1, help="Instances per model.")
@click.option(
    "--threads",
    type=int,
    default=0,
    help="ONNX Runtime threads per session (0: cores / concurrent sessions).",
)
@click.option("--workspace-mib", type=int, default=4096, help="TensorRT builder workspace.")
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="TensorRT timing cache (default: OUT.timing.cache).",
)
@click.option(
    "--builder",
    type=click.Choice(BUILDERS),
    default="python",
    help="TensorRT Python API or trtexec.",
)
@click.option(
    "--tolerance", type=float, default=1e-4, help="Max relative error ONNX Runtime vs PyTorch."
)
@click.option(
    "--fp16-tolerance",
    type=float,
    default=2e-2,
    help="Max relative error of FP16 engines vs ONNX Runtime FP32.",
)
@click.option("--opset", type=int, default=17)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def engines_command(**options) -> None:
    """Export ONNX, simplify, check, build engines and write the model repository."""
    from dcam.build.config import BuildConfig
    from dcam.build.engines import build_repository, worst_errors

    try:
        report = build_repository(BuildConfig(**options))
    except DcamError as exc:
        raise click.ClickException(str(exc)) from exc
    for name, err in worst_errors(report).items():
        click.echo(f"{name}: ONNX Runtime vs PyTorch max relative error {err:.2e}")
    click.echo(
        f"wrote {options['out']} ({report['target']}, {report['layout']}) "
        f"in {report['seconds']:.1f} s"
    )


@build_group.command("verify")
@click.argument("repo", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Training run to compare with (default: the one the build recorded).",
)
@click.option("--tolerance", type=float, default=1e-4, help="Max relative error of the map.")
def verify_command(repo: str, run_dir: str | None, tolerance: float) -> None:
    """Serve REPO with the embedded tritonserver and compare it with the PyTorch reference."""
    from dcam.build.verify import verify_repository

    try:
        report = verify_repository(Path(repo), Path(run_dir) if run_dir else None, tolerance)
    except DcamError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report["results"], indent=1))
    click.echo("verify: served maps, scores and decisions match the in-process reference")


@click.command(context_settings={"show_default": True})
@click.argument("repo", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", help="Address to bind (loopback by default).")
@click.option("--http-port", type=int, default=8000)
@click.option("--grpc-port", type=int, default=8001)
@click.option("--metrics-port", type=int, default=8002)
@click.option("--ready-timeout", type=float, default=120.0)
@click.option("--log-verbose", type=int, default=0)
def serve_command(
    repo: str,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    ready_timeout: float,
    log_verbose: int,
) -> None:
    """Serve REPO with the tritonserver from the nvidia-pytriton wheel until Ctrl-C/SIGTERM."""
    import signal
    import threading

    from dcam.build.server import ServerConfig, TritonServer

    config = ServerConfig(
        Path(repo), host, http_port, grpc_port, metrics_port, ready_timeout, log_verbose
    )
    server = TritonServer(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except DcamError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"serving {repo}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
        f"metrics {host}:{server.ports['metrics']} (log {server.log_path}); Ctrl-C stops",
    )
    try:
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                raise click.ClickException(
                    f"tritonserver exited with code "
                    f"{server.process.returncode}:\n{server.log_tail()}"
                )
    finally:
        server.stop()
    click.echo("tritonserver stopped")
