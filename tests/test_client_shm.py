"""System shared memory between dcam-client and a server on the same host, against the real
tritonserver: registered once, reused, equal scores, nothing left behind, dead clients swept."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from dcam.client import shm
from dcam.client.score import ScoreConfig, Scorer, score_paths
from dcam.core.errors import ClientError
from dcam.serve.server import ServerConfig, TritonServer

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def server(ensemble_repo: Path):
    with TritonServer(ServerConfig(ensemble_repo)) as srv:
        yield srv


def _registered(server) -> set[str]:
    status = grpcclient.InferenceServerClient(server.grpc_url).get_system_shared_memory_status()
    return set(status.regions)


def _mine() -> set[str]:
    return {p.name for p in shm.SHM_DIR.glob(f"{shm.PREFIX}-{os.getpid()}-*")}


def _paths(synthetic_root: Path) -> list[Path]:
    return sorted(synthetic_root.glob("*/test/*/*.png"))[:13]


def test_scores_through_shared_memory_equal_the_wire_and_leave_nothing(
    server, synthetic_root: Path
) -> None:
    paths = _paths(synthetic_root)

    async def run(mode: str) -> tuple[dict, set[str], set[str], list[str]]:
        cfg = ScoreConfig(urls=(server.grpc_url,), batch_size=4, concurrency=3, shared_memory=mode)
        scorer = Scorer(cfg)
        try:
            results = {r.path: r async for r in scorer.stream(paths)}
            return results, _registered(server), _mine(), scorer.pool.notes
        finally:
            await scorer.close()

    wire, wire_registered, wire_files, _ = asyncio.run(run("none"))
    shared, registered, files, notes = asyncio.run(run("system"))
    assert wire_registered == set() and wire_files == set()
    # One region per request in flight, registered once and reused for all four batches.
    expected = {f"{shm.PREFIX}-{os.getpid()}-{i}" for i in range(3)}
    assert registered == expected and files == expected
    assert notes == [f"{server.grpc_url}: images through shared memory"]
    assert all(r.ok for r in shared.values()) and shared.keys() == wire.keys()
    assert {p: r.score for p, r in shared.items()} == {p: r.score for p, r in wire.items()}
    assert _registered(server) == set() and _mine() == set()  # unregistered and unlinked


def test_regions_of_a_client_that_died_are_swept(server, synthetic_root: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"{shm.PREFIX}-{dead.pid}-0"
    region = shm.Region(name, 4096)  # what a client killed with SIGKILL leaves: file + registration
    grpcclient.InferenceServerClient(server.grpc_url).register_system_shared_memory(
        name, region.key, region.size
    )
    assert name in _registered(server)
    results = asyncio.run(
        score_paths(_paths(synthetic_root)[:2], ScoreConfig(urls=(server.grpc_url,)))
    )
    assert all(r.ok for r in results)
    assert not (shm.SHM_DIR / name).exists() and name not in _registered(server)


def test_system_mode_refused_is_an_error_not_a_fallback(
    ensemble_repo: Path, synthetic_root: Path
) -> None:
    # A server bound beyond loopback without a key refuses registration: with --shared-memory
    # system that stops the run instead of quietly sending over the wire.
    with TritonServer(ServerConfig(ensemble_repo, host="0.0.0.0")) as server:
        cfg = ScoreConfig(urls=(server.grpc_url,), shared_memory="system", ready_timeout_s=10)
        with pytest.raises(ClientError, match="refused shared memory"):
            asyncio.run(score_paths(_paths(synthetic_root)[:1], cfg))
    assert _mine() == set()
