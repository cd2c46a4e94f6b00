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

    async def run(mode: str) -> tuple[dict, set[str], set[str], list[str], set[str]]:
        cfg = ScoreConfig(urls=(server.grpc_url,), batch_size=4, concurrency=3, shared_memory=mode)
        scorer = Scorer(cfg)
        try:
            results = {r.path: r async for r in scorer.stream(paths)}
            regions = scorer.pool.regions.regions if scorer.pool.regions else []
            names = {r.name for r in regions}
            return results, _registered(server), _mine(), scorer.pool.notes, names
        finally:
            await scorer.close()

    wire, wire_registered, wire_files, _, wire_names = asyncio.run(run("none"))
    shared, registered, files, notes, names = asyncio.run(run("system"))
    assert wire_registered == set() and wire_files == set() and wire_names == set()
    # One region per request in flight, registered once and reused for all four batches.
    assert len(names) == 3 and registered == names and files == names
    assert notes == [f"{server.grpc_url}: images through shared memory"]
    assert all(r.ok for r in shared.values()) and shared.keys() == wire.keys()
    assert {p: r.score for p, r in shared.items()} == {p: r.score for p, r in wire.items()}
    assert _registered(server) == set() and _mine() == set()  # unregistered and unlinked


def test_regions_of_a_client_that_died_are_swept(server, synthetic_root: Path) -> None:
    # What a client killed with SIGKILL leaves: a file nobody locks, and its registration.
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"{shm.PREFIX}-{dead.pid}-0badc0de-0"
    (shm.SHM_DIR / name).write_bytes(bytes(4096))
    grpcclient.InferenceServerClient(server.grpc_url).register_system_shared_memory(
        name, f"/{name}", 4096
    )
    assert name in _registered(server) and shm.is_stale(name)
    results = asyncio.run(
        score_paths(_paths(synthetic_root)[:2], ScoreConfig(urls=(server.grpc_url,)))
    )
    assert all(r.ok for r in results)
    assert not (shm.SHM_DIR / name).exists() and name not in _registered(server)


def test_a_live_clients_regions_are_never_taken_for_stale() -> None:
    pool = shm.RegionPool(2, 4096)
    try:
        names = [r.name for r in pool.regions]
        # Locked by this process, whatever pid another namespace would see in the name.
        assert not any(shm.is_stale(n) for n in names) and shm.remove_stale_files() == []
        assert all((shm.SHM_DIR / n).exists() for n in names)
    finally:
        pool.close()
    assert not any((shm.SHM_DIR / n).exists() for n in names)


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
