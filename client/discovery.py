"""Servers behind one name: `dns:///name:port` resolves to every replica (a Kubernetes headless
Service's A records), re-resolved as pods come and go.

gRPC keeps one HTTP/2 connection per server, so a name that resolves to one virtual address
pins a client to one pod. Resolving the name ourselves and treating each address as a server of
the pool spreads batches over all of them, with the pool's health and back-off per replica.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from dcam.core.errors import ClientError
from dcam.core.network import address_url

SCHEME = "dns:"
Resolver = Callable[[str, int], list[str]]  # (host, port) -> addresses, e.g. ["10.0.0.7"]


@dataclass(frozen=True)
class NameTarget:
    """`dns:///host:port` (or `dns://authority/host:port`: the authority is not used)."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> NameTarget:
        rest = url[len(SCHEME) :].lstrip("/")
        if url.startswith("dns://") and not url.startswith("dns:///"):
            rest = rest.split("/", 1)[-1]  # dns://authority/host:port
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ClientError(f"{url!r}: give a name as dns:///host:port")
        return cls(host, int(port))


def is_name_target(url: str) -> bool:
    return url.startswith(SCHEME)


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (all A and AAAA records)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


class Discovery:
    """The current server URLs behind `targets`, resolved at most every `every_s` seconds."""

    def __init__(self, targets: list[NameTarget], every_s: float, resolver: Resolver) -> None:
        self.targets, self.every_s, self.resolver = targets, every_s, resolver
        self._resolved_at = -float("inf")
        self._found: dict[NameTarget, set[str]] = {t: set() for t in targets}
        self.error: str | None = None  # the last resolution failure, for the user

    def due(self) -> bool:
        return bool(self.targets) and time.monotonic() - self._resolved_at >= self.every_s

    async def resolve(self) -> set[str]:
        """Resolve every name now; a name that fails keeps its last addresses."""
        self._resolved_at = time.monotonic()
        loop = asyncio.get_running_loop()
        for target in self.targets:
            try:
                found = await loop.run_in_executor(None, self.resolver, target.host, target.port)
            except OSError as exc:
                self.error = f"cannot resolve {target.host}: {exc}"
                continue
            self._found[target] = {address_url(a, target.port) for a in found}
        return set().union(*self._found.values())
