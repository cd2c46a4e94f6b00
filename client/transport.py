"""How the client reaches a server: TLS for gRPC and the header that unlocks restricted APIs.

Triton serves TLS on gRPC only (`--grpc-use-ssl`). tritonclient's gRPC client takes the PEM
files' paths (`ssl`, `root_certificates`, `private_key`, `certificate_chain`). The API key travels
as the header `dcam-serve` restricts its control APIs to (core/names.py). Behind a `dns:///` name
the client dials pod addresses, so the name the certificate must carry is set on the channel
(`grpc.ssl_target_name_override`) rather than taken from the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcam.core.errors import ConfigError
from dcam.core.names import API_KEY_HEADER, GRPC_RESTRICTED_HEADER_PREFIX


@dataclass(frozen=True)
class ClientTls:
    """TLS to a gRPC server: the CA to trust (None: the system's), for mutual TLS this client's
    certificate and key, and the name the server's certificate is checked against."""

    root_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # None: the host dialled, except behind dns:///NAME, where the pool sets NAME (the pods'
    # addresses are not in a certificate issued for the Service's name).
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("a client certificate needs its key, and a key its certificate")
        name = self.server_name
        if name is not None and (not name or any(c in name for c in ":/ ")):
            raise ConfigError(
                f"TLS server name {name!r}: give the host name the server's certificate is "
                "issued for, without scheme or port (e.g. dcam-triton-pods.ns.svc)"
            )

    def grpc_kwargs(self) -> dict:
        """tritonclient.grpc InferenceServerClient's TLS arguments: the PEM files' paths, each
        checked readable first so a typo is named here rather than as a failed handshake, and
        with a server name the channel options that check the certificate against it."""
        kwargs: dict[str, object] = {
            "ssl": True,
            "root_certificates": _readable(self.root_cert, "root certificate"),
            "private_key": _readable(self.key, "client key"),
            "certificate_chain": _readable(self.cert, "client certificate"),
        }
        if self.server_name:
            kwargs["channel_args"] = _channel_args(self.server_name)
        return kwargs


def _channel_args(server_name: str) -> list[tuple[str, str | int]]:
    """tritonclient's default channel options plus the name override. Its `channel_args`
    replaces those defaults rather than adding to them, and without its message-size limits a
    batch over gRPC's 4 MiB default would be refused."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        # The certificate is checked against this name instead of the address dialled.
        ("grpc.ssl_target_name_override", server_name),
    ]


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
