"""The name a TLS server's certificate is checked against: behind `dns:///NAME` the client dials
pod addresses, which a certificate issued for the Service's name does not carry.

A real server on loopback with a certificate for `dcam-triton-pods.test` only (no IP address);
the test's resolver stands in for the cluster's DNS. Certificates come from the openssl CLI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from dcam.client.cli import client_group
from dcam.client.results import read_results
from dcam.client.score import ScoreConfig, Scorer
from dcam.client.transport import ClientTls
from dcam.core.errors import ClientError, ConfigError
from dcam.core.network import url_host
from dcam.serve.security import GrpcTls
from dcam.serve.server import ServerConfig, TritonServer
from tests.tools import certificates

NAME = "dcam-triton-pods.test"  # the only name in the server's certificate


def test_a_server_name_overrides_the_target_name_and_keeps_the_message_limits() -> None:
    assert "channel_args" not in ClientTls().grpc_kwargs()  # tritonclient's defaults stay
    options = dict(ClientTls(server_name=NAME).grpc_kwargs()["channel_args"])
    assert options["grpc.ssl_target_name_override"] == NAME
    # channel_args replaces tritonclient's defaults: without these a batch over 4 MiB fails.
    assert options["grpc.max_receive_message_length"] == grpcclient.MAX_GRPC_MESSAGE_SIZE
    assert options["grpc.max_send_message_length"] == grpcclient.MAX_GRPC_MESSAGE_SIZE
    for wrong in ("", f"{NAME}:8001", f"dns:///{NAME}"):
        with pytest.raises(ConfigError, match="without scheme or port"):
            ClientTls(server_name=wrong)


@pytest.fixture(scope="module")
def name_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a server certificate it signed for NAME alone."""
    return certificates(tmp_path_factory.mktemp("name-certs"), f"DNS:{NAME}", {"server": NAME})


@pytest.fixture(scope="module")
def tls_server(ensemble_repo: Path, name_certs: Path) -> Iterator[TritonServer]:
    tls = GrpcTls(name_certs / "server.pem", name_certs / "server.key")
    with TritonServer(ServerConfig(ensemble_repo, grpc_tls=tls)) as server:
        assert url_host(server.grpc_url) == "127.0.0.1"
        yield server


def _score(url: str, images: Path, out: Path, *extra: str):
    args = ["score", "--dir", str(images), "--url", url, "--output", str(out), "--force"]
    return CliRunner().invoke(client_group, [*args, "--ready-timeout", "3", *extra])


@pytest.mark.triton
def test_dialling_the_address_fails_verification_and_the_server_name_fixes_it(
    tls_server: TritonServer, name_certs: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    url, ca = tls_server.grpc_url, str(name_certs / "ca.pem")
    images = synthetic_root / "carpet" / "test" / "good"
    with pytest.raises(InferenceServerException) as refused:
        grpcclient.InferenceServerClient(url, ssl=True, root_certificates=ca).is_server_live()
    # The CA is trusted; the address is not in the certificate. grpcio 1.85 says "Hostname
    # Verification Check failed", older releases "Peer name 127.0.0.1 is not in peer certificate".
    message = refused.value.message().lower()
    assert "hostname verification" in message or "peer name" in message, message

    result = _score(url, images, tmp_path / "refused.jsonl", "--tls-root-cert", ca)
    assert result.exit_code != 0 and "no server with model 'dcam' ready" in result.output

    out = tmp_path / "scores.jsonl"
    result = _score(url, images, out, "--tls-root-cert", ca, "--tls-server-name", NAME)
    assert result.exit_code == 0, result.output + result.stderr
    rows = read_results(out)
    assert len(rows) == len(list(images.glob("*.png"))) and all(not r["error"] for r in rows)


async def _score_behind(url: str, tls: ClientTls, paths: list[Path], asked: list[str]) -> list:
    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]  # the pods' addresses, as a headless Service's A records

    config = ScoreConfig(urls=(url,), tls=tls, ready_timeout_s=3, batch_size=4)
    scorer = Scorer(config, resolver=resolver)
    try:
        return [r async for r in scorer.stream(paths)]
    finally:
        await scorer.close()


# The CLI takes no resolver, so these go through the library (Scorer) that `score` runs.
@pytest.mark.triton
def test_a_dns_name_is_the_server_name_of_every_address_it_resolves_to(
    tls_server: TritonServer, name_certs: Path, synthetic_root: Path
) -> None:
    port = tls_server.grpc_url.rsplit(":", 1)[1]
    paths = sorted((synthetic_root / "carpet" / "test" / "good").glob("*.png"))
    tls = ClientTls(root_cert=name_certs / "ca.pem")
    asked: list[str] = []
    results = asyncio.run(_score_behind(f"dns:///{NAME}:{port}", tls, paths, asked))
    assert asked[0] == NAME
    assert len(results) == len(paths) and all(r.error is None for r in results)

    # Another name resolving to the same pod does not verify: the name is what is checked...
    with pytest.raises(ClientError, match="no server with model 'dcam' ready"):
        asyncio.run(_score_behind(f"dns:///other.test:{port}", tls, paths, []))
    # ...unless --tls-server-name says which name the certificate carries.
    named = ClientTls(root_cert=name_certs / "ca.pem", server_name=NAME)
    results = asyncio.run(_score_behind(f"dns:///other.test:{port}", named, paths, []))
    assert len(results) == len(paths) and all(r.error is None for r in results)
