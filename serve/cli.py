"""Command line: `dcam-serve REPO`, the embedded tritonserver until Ctrl-C or SIGTERM.

Options map onto `ServerConfig` and take its defaults, except the ports, whose command-line
defaults are Triton's own (8000/8001/8002, core/network.py) where the library picks free ports.
Only this layer turns library errors into messages and exit codes.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from dcam.core.cli import EXISTING_FILE, default, reports_errors
from dcam.core.errors import ConfigError, ServerError
from dcam.core.network import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    address_url,
    is_loopback,
    reachable_at,
)
from dcam.serve.security import RESTRICTED_APIS, GrpcTls
from dcam.serve.server import ServerConfig, TritonServer


@click.command(context_settings={"show_default": True})
@click.argument("repo", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default=default(ServerConfig, "host"), help="Address to bind.")
@click.option("--http-port", type=int, default=DEFAULT_HTTP_PORT)
@click.option("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
@click.option("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
@click.option("--ready-timeout", type=float, default=default(ServerConfig, "ready_timeout_s"))
@click.option("--log-verbose", type=int, default=default(ServerConfig, "log_verbose"))
@click.option(
    "--poll-secs",
    type=click.IntRange(min=0),
    default=default(ServerConfig, "poll_secs"),
    help="Seconds between scans of REPO for new model versions, so a new calibration version "
    "(a version folder of the deciding model) is served without a restart; one that fails to "
    "load leaves the previous version serving. 0: no scans, REPO as at start.",
)
@click.option(
    "--api-key",
    envvar="DCAM_API_KEY",
    default=None,
    help=f"Key to the control APIs ({', '.join(RESTRICTED_APIS)}), sent by clients as a header. "
    "Without one they are open on loopback and refused on any other address. "
    "Prefer the DCAM_API_KEY environment variable to the flag.",
)
@click.option(
    "--grpc-server-cert", type=EXISTING_FILE, default=None, help="PEM certificate: gRPC TLS."
)
@click.option(
    "--grpc-server-key", type=EXISTING_FILE, default=None, help="PEM private key: gRPC TLS."
)
@click.option(
    "--grpc-root-cert",
    type=EXISTING_FILE,
    default=None,
    help="PEM CA that client certificates must chain to: mutual TLS.",
)
@reports_errors
def serve_command(
    repo: str,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    ready_timeout: float,
    log_verbose: int,
    poll_secs: int,
    api_key: str | None,
    grpc_server_cert: str | None,
    grpc_server_key: str | None,
    grpc_root_cert: str | None,
) -> None:
    """Serve REPO with the tritonserver from the nvidia-pytriton wheel until Ctrl-C/SIGTERM.

    gRPC uses TLS when given a certificate and key; HTTP, which Triton serves without TLS, then
    binds 127.0.0.1 only.
    """
    config = ServerConfig(
        Path(repo),
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        ready_timeout_s=ready_timeout,
        log_verbose=log_verbose,
        poll_secs=poll_secs,
        api_key=api_key,
        grpc_tls=_tls(grpc_server_cert, grpc_server_key, grpc_root_cert),
        keep_log=True,
    )
    for line in exposure_notes(config):
        click.echo(line)
    server = TritonServer(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if server.freed_at_start.regions:
        click.echo(f"freed {server.freed_at_start.describe()} left by earlier servers")
    click.echo(f"serving {repo} (log {server.log_path}); Ctrl-C stops")
    for line in endpoint_lines(server):
        click.echo(line)
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


def endpoint_lines(server: TritonServer) -> list[str]:
    """Each endpoint's bind address and where clients reach it (a wildcard: every address)."""
    binds = {
        "HTTP": server.http_host,  # loopback when gRPC has TLS (Triton's HTTP has none)
        "gRPC": server.config.host,
        "metrics": server.config.host,
    }
    lines = []
    for name, host in binds.items():
        port = server.ports[name.lower()]
        lines.append(
            f"  {name:8s}bound to {address_url(host or '0.0.0.0', port)}, "
            f"reached at {', '.join(reachable_at(host, port))}"
        )
    return lines


def _tls(cert: str | None, key: str | None, client_ca: str | None) -> GrpcTls | None:
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None or key is None:
        raise ConfigError("gRPC TLS needs both --grpc-server-cert and --grpc-server-key")
    return GrpcTls(Path(cert), Path(key), Path(client_ca) if client_ca else None)


def exposure_notes(config: ServerConfig) -> list[str]:
    """What a bind beyond loopback exposes, said before the server starts."""
    if is_loopback(config.host):
        return []
    notes = []
    if config.api_key is None:
        notes.append(
            f"control APIs ({', '.join(RESTRICTED_APIS)}) refused on {config.host}: "
            "no --api-key given"
        )
    if config.grpc_tls is None:
        notes.append(
            f"gRPC and HTTP are plain text on {config.host}; "
            "--grpc-server-cert and --grpc-server-key turn on TLS for gRPC"
        )
    return notes
