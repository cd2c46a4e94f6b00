"""How the client reaches a server: TLS for gRPC and the header that unlocks restricted APIs.

Triton serves TLS on gRPC only (`--grpc-use-ssl`). tritonclient's gRPC client takes the PEM
files' paths (`ssl`, `root_certificates`, `private_key`, `certificate_chain`). The API key travels
as the header `dcam-serve` restricts its control APIs to (core/names.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcam.core.errors import ConfigError
from dcam.core.names import API_KEY_HEADER, GRPC_RESTRICTED_HEADER_PREFIX


@dataclass(frozen=True)
class ClientTls:
    """TLS to a gRPC server: the CA to trust (None: the system's) and, for mutual TLS, this
    client's certificate and key."""

    root_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("a client certificate needs its key, and a key its certificate")

    def grpc_kwargs(self) -> dict:
        """tritonclient.grpc InferenceServerClient's TLS arguments: the PEM files' paths, each
        checked readable first so a typo is named here rather than as a failed handshake."""
        return {
            "ssl": True,
            "root_certificates": _readable(self.root_cert, "root certificate"),
            "private_key": _readable(self.key, "client key"),
            "certificate_chain": _readable(self.cert, "client certificate"),
        }


def _readable(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    return str(path)


def api_key_headers(api_key: str | None, protocol: str) -> dict[str, str] | None:
    """The request headers that carry the key (None: send none). Triton reads the header of a
    restricted gRPC protocol with a prefix (the server's own refusal names it)."""
    if not api_key:
        return None
    prefix = GRPC_RESTRICTED_HEADER_PREFIX if protocol == "grpc" else ""
    return {prefix + API_KEY_HEADER: api_key}
