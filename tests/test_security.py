"""dcam-serve beyond loopback: control APIs behind a key, gRPC over (mutual) TLS, and the client
that speaks both. Certificates are made by the test with the openssl command line."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from dcam.client.cli import client_group
from dcam.client.results import read_results
from dcam.client.transport import ClientTls, api_key_headers
from dcam.client.triton import Server
from dcam.core.errors import ClientError, ConfigError
from dcam.serve.cli import serve_command
from dcam.serve.security import RESTRICTED_APIS, GrpcTls, restricted_api_args
from dcam.serve.server import ServerConfig, TritonServer
from tests.tools import certificates

KEY = "k-3f9a2c"


def test_loopback_restricts_nothing_without_a_key() -> None:
    assert restricted_api_args("127.0.0.1", None) == []
    assert restricted_api_args("localhost", None) == []


def test_other_binds_lock_the_control_apis_behind_a_key_nobody_holds() -> None:
    first, second = restricted_api_args("0.0.0.0", None), restricted_api_args("0.0.0.0", None)
    assert [a.split("=", 1)[0] for a in first] == [
        "--http-restricted-api",
        "--grpc-restricted-protocol",
    ]
    for arg in first:
        apis, header = arg.split("=", 1)[1].split(":", 1)
        assert apis.split(",") == list(RESTRICTED_APIS) and header.startswith("dcam-api-key=")
    assert first != second  # a fresh random key each time, never shown


def test_a_key_restricts_even_on_loopback_and_must_be_a_plain_token() -> None:
    assert all(arg.endswith(f"dcam-api-key={KEY}") for arg in restricted_api_args("::1", KEY))
    for bad in ("", "a b", "a,b", "a:b", "a=b"):
        with pytest.raises(ConfigError):
            restricted_api_args("0.0.0.0", bad)


def test_tls_settings_are_checked_before_any_server_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="certificate"):
        GrpcTls(tmp_path / "missing.pem", tmp_path / "missing.key").args()
    with pytest.raises(ConfigError, match="needs its key"):
        ClientTls(cert=tmp_path / "client.pem")
    with pytest.raises(ConfigError, match="cannot read"):
        ClientTls(root_cert=tmp_path / "missing.pem").grpc_kwargs()
    with pytest.raises(ClientError, match="gRPC only"):
        Server("127.0.0.1:8000", "http", ClientTls())
    assert api_key_headers(KEY, "grpc") == {"triton-grpc-protocol-dcam-api-key": KEY}
    assert api_key_headers(KEY, "http") == {"dcam-api-key": KEY}
    assert api_key_headers(None, "grpc") is None


def test_serve_cli_wants_certificate_and_key_together(tmp_path: Path) -> None:
    cert = tmp_path / "server.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    result = CliRunner().invoke(serve_command, [str(tmp_path), "--grpc-server-cert", str(cert)])
    assert result.exit_code != 0 and "--grpc-server-key" in result.output


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, and a server and a client certificate it signed, valid for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("certs")
    return certificates(
        folder, "IP:127.0.0.1,DNS:localhost", {"server": "server", "client": "client"}
    )


def _refused(call) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.message()


def _score(url: str, images: Path, out: Path, *extra: str):
    args = ["score", "--dir", str(images), "--url", url, "--output", str(out), "--force"]
    return CliRunner().invoke(client_group, [*args, "--ready-timeout", "5", *extra])


@pytest.mark.triton
def test_wildcard_bind_without_a_key_refuses_control_apis_and_still_scores(
    ensemble_repo: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    images = synthetic_root / "carpet" / "test" / "good"
    with TritonServer(ServerConfig(ensemble_repo, host="0.0.0.0")) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready("dcam")  # health, metadata and inference stay open
        assert "restricted" in _refused(client.get_model_repository_index)
        assert "restricted" in _refused(lambda: client.register_system_shared_memory("x", "/x", 8))
        guess = {"triton-grpc-protocol-dcam-api-key": "guess"}
        assert "restricted" in _refused(lambda: client.unload_model("dcam", headers=guess))
        index = f"http://{server.http_url}/v2/repository/index"
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(urllib.request.Request(index, b"{}", method="POST"))
        assert http.value.code == 403
        # The client on this host offers shared memory, is refused, says so, sends on the wire.
        result = _score(server.grpc_url, images, tmp_path / "scores.jsonl")
        assert result.exit_code == 0, result.output + result.stderr
        assert "shared memory refused, images over the wire" in result.stderr
        rows = read_results(tmp_path / "scores.jsonl")
        assert len(rows) == len(list(images.glob("*.png"))) and all(not r["error"] for r in rows)


@pytest.mark.triton
def test_mutual_tls_and_api_key_round_trip(
    ensemble_repo: Path, synthetic_root: Path, certs: Path, tmp_path: Path
) -> None:
    tls = GrpcTls(certs / "server.pem", certs / "server.key", client_ca=certs / "ca.pem")
    images = synthetic_root / "carpet" / "test" / "good"
    out = tmp_path / "scores.jsonl"
    ca, cert, key = (str(certs / n) for n in ("ca.pem", "client.pem", "client.key"))
    with TritonServer(ServerConfig(ensemble_repo, api_key=KEY, grpc_tls=tls)) as server:
        url = server.grpc_url
        full = ["--tls-root-cert", ca, "--tls-cert", cert, "--tls-key", key, "--api-key", KEY]
        result = _score(url, images, out, *full)
        assert result.exit_code == 0, result.output + result.stderr
        assert "images through shared memory" in result.stderr  # the key let it register
        assert len(read_results(out)) == len(list(images.glob("*.png")))

        tls_client = grpcclient.InferenceServerClient(
            url, ssl=True, root_certificates=ca, private_key=key, certificate_chain=cert
        )
        assert "dcam" in {m.name for m in tls_client.get_model_repository_index(
            headers=api_key_headers(KEY, "grpc")
        ).models}  # fmt: skip
        assert "restricted" in _refused(tls_client.get_model_repository_index)

        for refused in ([], ["--tls-root-cert", ca], ["--tls-root-cert", ca, "--api-key", KEY]):
            result = _score(url, images, tmp_path / "refused.jsonl", *refused)
            assert result.exit_code != 0 and "no server with model 'dcam' ready" in result.output
