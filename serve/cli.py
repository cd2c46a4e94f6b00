"""Command line: `dcam-serve REPO`, the embedded tritonserver until Ctrl-C or SIGTERM.

Options map onto `ServerConfig` and take its defaults, except the ports, whose command-line
defaults are Triton's own (8000/8001/8002) where the library picks free ports. Only this layer
turns library errors into messages and exit codes.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from dcam.core.cli import default, reports_errors
from dcam.core.errors import ServerError
from dcam.serve.server import ServerConfig, TritonServer


@click.command(context_settings={"show_default": True})
@click.argument("repo", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default=default(ServerConfig, "host"), help="Address to bind.")
@click.option("--http-port", type=int, default=8000)
@click.option("--grpc-port", type=int, default=8001)
@click.option("--metrics-port", type=int, default=8002)
@click.option("--ready-timeout", type=float, default=default(ServerConfig, "ready_timeout_s"))
@click.option("--log-verbose", type=int, default=default(ServerConfig, "log_verbose"))
@reports_errors
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
    config = ServerConfig(
        Path(repo), host, http_port, grpc_port, metrics_port, ready_timeout, log_verbose
    )
    server = TritonServer(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if server.freed_at_start.regions:
        click.echo(f"freed {server.freed_at_start.describe()} left by earlier servers")
    click.echo(
        f"serving {repo}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
        f"metrics {host}:{server.ports['metrics']} (log {server.log_path}); Ctrl-C stops",
    )
    try:
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code "
                    f"{server.process.returncode}:\n{server.log_tail()}"
                )
    finally:
        server.stop()
        if server.freed_at_stop.regions:
            click.echo(f"freed {server.freed_at_stop.describe()}")
    click.echo("tritonserver stopped")
