"""dcam-client across replicas behind one name (`dns:///name:port`), against real tritonservers
on loopback addresses 127.0.0.1-3 that share one gRPC port, like pods behind a headless Service.
The resolver is the test's: it decides which replicas the name holds at each moment."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from dcam.client.discovery import NameTarget
from dcam.client.score import ScoreConfig, Scorer
from dcam.core.errors import ClientError
from dcam.core.network import address_url
from dcam.serve.server import ServerConfig, TritonServer, free_port

pytestmark = pytest.mark.triton
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def test_names_parse() -> None:
    assert NameTarget.parse("dns:///dcam-triton-pods:8001") == NameTarget("dcam-triton-pods", 8001)
    assert NameTarget.parse("dns://10.0.0.10/line.svc:8001") == NameTarget("line.svc", 8001)
    assert address_url("fd00::7", 8001) == "[fd00::7]:8001"
    with pytest.raises(ClientError, match="dns:///host:port"):
        NameTarget.parse("dns:///no-port")


def _served(host: str, port: int) -> int:
    """Images the replica's `dcam` ensemble scored (Triton's statistics)."""
    stats = grpcclient.InferenceServerClient(f"{host}:{port}").get_inference_statistics("dcam")
    return stats.model_stats[0].inference_count


def _replica(repo: Path, host: str, grpc_port: int) -> TritonServer:
    return TritonServer(ServerConfig(repo, host=host, grpc_port=grpc_port)).start()


def test_batches_spread_over_the_replicas_behind_a_name_that_changes(
    ensemble_repo: Path, synthetic_root: Path
) -> None:
    port = free_port()
    paths = sorted(synthetic_root.glob("*/train/good/*.png")) * 12  # each occurrence one input
    names = {"line.test": [HOSTS[0], HOSTS[1]]}
    replicas = {h: _replica(ensemble_repo, h, port) for h in HOSTS[:2]}
    late: dict[str, int] = {}

    def resolver(host: str, p: int) -> list[str]:
        assert p == port
        return list(names[host])

    async def run() -> list:
        cfg = ScoreConfig(
            urls=(f"dns:///line.test:{port}",), batch_size=2, concurrency=4, resolve_every_s=0.2
        )
        scorer = Scorer(cfg, resolver=resolver)
        results = []
        loop = asyncio.get_running_loop()
        try:
            async for result in scorer.stream(paths):
                results.append(result)
                if len(results) == len(paths) // 3:  # a replica appears
                    replicas[HOSTS[2]] = await loop.run_in_executor(
                        None, _replica, ensemble_repo, HOSTS[2], port
                    )
                    names["line.test"].append(HOSTS[2])
                if len(results) == 2 * len(paths) // 3:  # one leaves and stops
                    names["line.test"].remove(HOSTS[0])
                    await asyncio.sleep(0.5)  # the next resolution drops it
                    late[HOSTS[0]] = _served(HOSTS[0], port)
                    await loop.run_in_executor(None, replicas[HOSTS[0]].stop)
        finally:
            await scorer.close()
        return results

    try:
        results = asyncio.run(run())
        served = {h: _served(h, port) for h in HOSTS[1:]}
    finally:
        for replica in replicas.values():
            replica.stop()
    assert sorted(r.path for r in results) == sorted(str(p) for p in paths)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    # The replica that joined served; the two there from the start shared the first third.
    assert served[HOSTS[2]] > 0
    assert late[HOSTS[0]] > 0 and served[HOSTS[1]] > late[HOSTS[0]]


def test_load_spreads_evenly_across_replicas(ensemble_repo: Path, synthetic_root: Path) -> None:
    port = free_port()
    paths = sorted(synthetic_root.glob("*/train/good/*.png")) * 10
    replicas = [_replica(ensemble_repo, h, port) for h in HOSTS]

    async def run() -> list:
        cfg = ScoreConfig(urls=(f"dns:///line.test:{port}",), batch_size=2, concurrency=3)
        scorer = Scorer(cfg, resolver=lambda host, p: list(HOSTS))
        try:
            return [r async for r in scorer.stream(paths)]
        finally:
            await scorer.close()

    try:
        results = asyncio.run(run())
        served = [_served(h, port) for h in HOSTS]
    finally:
        for replica in replicas:
            replica.stop()
    assert len(results) == len(paths) and all(r.ok for r in results)
    assert sum(served) == len(paths)
    assert max(served) <= 1.2 * min(served), served  # within 20%


def _new_version(repo: Path, out: Path) -> Path:
    """The same repository as model version 2 of every model: what a rollout ships."""
    new = shutil.copytree(repo, out)
    for version in new.glob("*/1"):
        version.rename(version.with_name("2"))
    return new


def test_rolling_update_to_a_new_model_version_fails_no_file(
    ensemble_repo: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    """Two replicas behind a name; each in turn stops (SIGTERM) and comes back serving version
    2, as a Deployment with maxUnavailable 0 rolls, while the client scores."""
    port = free_port()
    paths = sorted(synthetic_root.glob("*/train/good/*.png")) * 12
    v2 = _new_version(ensemble_repo, tmp_path / "v2")
    names = {"line.test": [HOSTS[0], HOSTS[1]]}
    replicas = {h: _replica(ensemble_repo, h, port) for h in HOSTS[:2]}

    def roll(host: str) -> None:
        names["line.test"].remove(host)  # not ready: out of the Service's endpoints
        replicas[host].stop()
        replicas[host] = _replica(v2, host, port)
        names["line.test"].append(host)

    async def run() -> list:
        cfg = ScoreConfig(
            urls=(f"dns:///line.test:{port}",), batch_size=2, concurrency=4, resolve_every_s=0.2
        )
        scorer = Scorer(cfg, resolver=lambda host, p: list(names[host]))
        results, loop, rolling = [], asyncio.get_running_loop(), []
        try:
            async for result in scorer.stream(paths):  # the client keeps sending meanwhile
                results.append(result)
                for i, host in enumerate(HOSTS[:2]):
                    if len(results) == (i + 1) * len(paths) // 3:
                        await asyncio.gather(*rolling)  # one replica at a time
                        rolling = [loop.run_in_executor(None, roll, host)]
            await asyncio.gather(*rolling)
        finally:
            await scorer.close()
        return results

    try:
        results = asyncio.run(run())
        versions = {
            h: grpcclient.InferenceServerClient(f"{h}:{port}").get_model_metadata("dcam").versions
            for h in HOSTS[:2]
        }
    finally:
        for replica in replicas.values():
            replica.stop()
    assert sorted(r.path for r in results) == sorted(str(p) for p in paths)
    assert [r.error for r in results if not r.ok] == []
    assert versions == {h: ["2"] for h in HOSTS[:2]}
