"""Start and stop the real `tritonserver` that ships in the `nvidia-pytriton` wheel.

For machines without Docker or a GPU: `serve/runtime.py` lays the wheel's server out in a work
folder with this interpreter's stub, checked to load; here we bind to 127.0.0.1, start it in its
own process group, and wait until the models are ready. By default it polls the repository, so a
new calibration version (core/served_calibration.py) is served without a restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dcam.core.errors import ConfigError, ServerError
from dcam.core.network import address_url
from dcam.serve.compat import check_embedded_server_can_serve
from dcam.serve.runtime import prepare_runtime, server_env
from dcam.serve.security import GrpcTls, restricted_api_args
from dcam.serve.shm import Freed, remove_stale_regions

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # bound to all: dial loopback


@dataclass(frozen=True)
class ServerConfig:
    """How to run the server; `dcam-serve` flags map onto these fields."""

    repository: Path
    host: str = "127.0.0.1"  # loopback unless told otherwise
    http_port: int = 0  # 0: pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    ready_timeout_s: float = 120.0
    log_verbose: int = 0
    api_key: str | None = None  # the key to the control APIs (serve/security.py)
    grpc_tls: GrpcTls | None = None  # TLS on gRPC; plain HTTP then binds loopback only
    keep_log: bool = False  # keep server.log after stop (dcam-serve does); else nothing is left
    # Seconds between scans of the repository (Triton's model-control mode poll): a new version
    # folder of the deciding model, a calibration, is loaded without a restart, and one that
    # fails to load leaves the version before serving. 0: mode none, the repository as at start.
    poll_secs: int = 2
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def _dialable(host: str, port: int) -> str:
    """What a local client dials for a server bound to `host` (a wildcard: loopback)."""
    return address_url(WILDCARDS.get(host, host), port)


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class TritonServer:
    """A running tritonserver; use as a context manager so it always stops."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.ports = {
            name: getattr(config, f"{name}_port") or free_port(config.host)
            for name in ("http", "grpc", "metrics")
        }
        self._work: Path | None = None  # made by start(): a server never started leaves nothing
        self.log_path: Path | None = None
        self.process: subprocess.Popen | None = None
        # Stale Python-backend regions removed before starting and after stopping.
        self.freed_at_start = self.freed_at_stop = Freed()

    @property
    def http_host(self) -> str:
        """HTTP has no TLS in Triton: with TLS on gRPC it stays on loopback (probes, local use)."""
        return "127.0.0.1" if self.config.grpc_tls is not None else self.config.host

    @property
    def http_url(self) -> str:
        return _dialable(self.http_host, self.ports["http"])

    @property
    def grpc_url(self) -> str:
        return _dialable(self.config.host, self.ports["grpc"])

    def security_args(self) -> list[str]:
        """Restricted control APIs and gRPC TLS, as `serve/security.py` decides them."""
        args = restricted_api_args(self.config.host, self.config.api_key)
        if self.config.grpc_tls is not None:
            args += self.config.grpc_tls.args()
        return args

    def model_control_args(self) -> list[str]:
        """Triton's model-control flags for `poll_secs` (0: its default, mode none)."""
        if self.config.poll_secs < 0:
            raise ConfigError(f"poll_secs is {self.config.poll_secs}; give 0 (no polling) or more")
        if self.config.poll_secs == 0:
            return []
        return ["--model-control-mode=poll", f"--repository-poll-secs={self.config.poll_secs}"]

    def start(self) -> TritonServer:
        repo = Path(self.config.repository)
        if not repo.is_dir():
            raise ServerError(f"model repository {repo} does not exist")
        check_embedded_server_can_serve(repo)
        for name, port in self.ports.items():
            if port_in_use(self.config.host, port):
                raise ServerError(f"{name} port {port} on {self.config.host} is already in use")
        self.freed_at_start = remove_stale_regions()  # left by servers killed hard earlier
        self._work = Path(tempfile.mkdtemp(prefix="dcam-triton-"))
        self.log_path = self._work / "server.log"
        try:
            self._launch(repo, prepare_runtime(self._work / "runtime"))
        except BaseException:
            self.stop()
            raise
        self.wait_ready()
        return self

    def _launch(self, repo: Path, runtime: Path) -> None:
        cmd = [
            str(runtime / "bin" / "tritonserver"),
            f"--model-repository={repo.resolve()}",
            f"--backend-directory={runtime / 'backends'}",
            f"--cache-directory={runtime / 'caches'}",
            f"--http-address={self.http_host}",
            f"--http-port={self.ports['http']}",
            f"--grpc-address={self.config.host}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-address={self.config.host}",
            f"--metrics-port={self.ports['metrics']}",
            "--allow-metrics=true",
            f"--log-verbose={self.config.log_verbose}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *self.model_control_args(),
            *self.security_args(),
            *self.config.extra_args,
        ]
        # No PYTHONDONTWRITEBYTECODE: the stubs get it and still write __pycache__ into the
        # version folders (their embedded interpreter ignores it; measured with 2.51), which a
        # polling server takes for a changed model. The build byte-compiles them instead.
        env = server_env()
        # Own process group, so stopping it also ends the Python backend stubs.
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()  # read before stop() removes the log
                self.stop()
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode}:\n{tail}"
                )
            if _is_ready(url):
                return
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise ServerError(
            f"tritonserver not ready after {self.config.ready_timeout_s:.0f} s:\n{tail}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left; remove the work dir.

        Tests and benchmarks start thousands of servers: each leaving its folder behind filled a
        CI machine's disk, so only a server told to keep its log leaves that one file.
        """
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None:
            # Stubs that outlive the server would keep shared memory alive.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._work is not None:
            shutil.rmtree(self._work / "runtime" if self.config.keep_log else self._work, True)
        if proc is not None:
            self.freed_at_stop = remove_stale_regions()  # what stubs killed above left

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
