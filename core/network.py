"""Addresses: is a host reachable only from this machine? Shared by the server (what it exposes
beyond loopback) and the client (whether shared memory with the server can work)."""

from __future__ import annotations

import ipaddress
import socket

# Triton's own default ports, which dcam-serve keeps on the command line and clients dial.
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address (127/8, ::1).

    A wildcard (0.0.0.0, ::) or a name that cannot be resolved counts as reachable from outside.
    """
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None)
    except socket.gaierror:
        return False
    addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    return bool(addresses) and all(a.is_loopback for a in addresses)


def address_url(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets: what clients dial."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_host(url: str) -> str:
    """The host of `host:port`, `[v6]:port` or `scheme://host:port` (address_url's inverse)."""
    rest = url.split("://", 1)[-1]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def interface_addresses() -> list[str]:
    """This machine's IPv4 addresses, one per interface that has one, loopback first (Linux)."""
    import fcntl
    import struct

    found = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            found.add(socket.inet_ntoa(reply[20:24]))
    return sorted(found, key=lambda a: (not ipaddress.ip_address(a).is_loopback, a))


def reachable_at(host: str, port: int) -> list[str]:
    """Where clients can dial a server bound to `host`: a wildcard (0.0.0.0, ::, "") stands for
    every address of this machine (:: also takes IPv4 on Linux's default dual stack)."""
    if host in ("0.0.0.0", ""):
        return [address_url(a, port) for a in interface_addresses()]
    if host == "::":
        return [address_url("::1", port)] + [address_url(a, port) for a in interface_addresses()]
    return [address_url(host, port)]
