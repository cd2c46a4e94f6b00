"""What `dcam-serve` exposes beyond loopback: restricted control APIs and TLS for gRPC.

Triton can demand a header on chosen APIs (`--http-restricted-api` / `--grpc-restricted-protocol`,
docs/customization_guide/inference_protocols.md, "Limit Endpoint Access") and serve gRPC over TLS
(`--grpc-use-ssl`, `--grpc-server-cert`, `--grpc-server-key`, and `--grpc-use-ssl-mutual` with
`--grpc-root-cert`). Bound to loopback, only this machine's users reach the server, so nothing is
restricted unless a key is given. Bound anywhere else, the APIs that change the server or read
its memory are always restricted: to the given key, or without one to a random key nobody holds,
which refuses them outright.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from dcam.core.errors import ConfigError
from dcam.core.names import API_KEY_HEADER
from dcam.core.network import is_loopback

# Load/unload models, register shared memory (read or write another process's memory), start
# traces, change logging. Health, metadata, model config (the client reads its calibration
# there), statistics and inference stay open.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")


@dataclass(frozen=True)
class GrpcTls:
    """TLS for the gRPC endpoint: the server's certificate and key, and for mutual TLS the CA
    whose certificates clients must present."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def args(self) -> list[str]:
        for role, path in (("certificate", self.cert), ("key", self.key), ("CA", self.client_ca)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS {role} {path} is not a readable file")
        args = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={Path(self.cert).resolve()}",
            f"--grpc-server-key={Path(self.key).resolve()}",
        ]
        if self.client_ca is not None:
            args += [
                "--grpc-use-ssl-mutual=true",
                f"--grpc-root-cert={Path(self.client_ca).resolve()}",
            ]
        return args


def restricted_api_args(host: str, api_key: str | None) -> list[str]:
    """Triton's flags restricting RESTRICTED_APIS on HTTP and gRPC to the header API_KEY_HEADER.

    With a key the APIs answer requests that carry it. Without one: open on loopback; elsewhere
    locked behind a random key that is never shown, so they refuse every request.
    """
    if api_key is None and is_loopback(host):
        return []
    if api_key is not None and (not api_key or any(c in api_key for c in ",:= \t\n")):
        raise ConfigError("the API key must be non-empty, without spaces, ',', ':' or '='")
    value = api_key if api_key is not None else secrets.token_urlsafe(32)
    setting = f"{','.join(RESTRICTED_APIS)}:{API_KEY_HEADER}={value}"
    return [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]
