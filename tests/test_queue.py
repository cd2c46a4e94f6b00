"""Bounded queues: the build writes a queue timeout on the models requests enter, the real
server rejects what waited too long, the client retries it, and dcam-serve refuses the queue-size
bound that crashes the embedded server (Triton core#466)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpc_sync
import tritonclient.grpc.aio as grpc_aio
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dcam.build.config import QUEUE_TIMEOUT_MS, BuildConfig
from dcam.build.engines import build_repository
from dcam.client.cli import client_group
from dcam.client.results import latest_rows
from dcam.core.errors import ConfigError, ServerError
from dcam.serve.compat import read_configs
from dcam.serve.server import ServerConfig, TritonServer


def _rewrite(repo: Path, model: str, edit) -> None:
    path = repo / model / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    edit(config.dynamic_batching.default_queue_policy)
    path.write_text(text_format.MessageToString(config))


def test_requests_enter_through_a_timed_queue_and_only_there(
    ensemble_repo: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """NVIDIA-container targets time requests out where they enter; the embedded 2.51 has no
    queue policy by default (its batcher stalls 0.5 s with one: benchmarks/README.md)."""
    configs = read_configs(ensemble_repo)
    assert not any(c.dynamic_batching.HasField("default_queue_policy") for c in configs.values())
    out = tmp_path / "onnx"
    build_repository(BuildConfig(run_dir=str(tiny_run), out=str(out), target="onnx", threads=1))
    configs = read_configs(out)
    for name in ("teacher", "student"):
        batching = configs[name].dynamic_batching
        assert batching.HasField("default_queue_policy")
        policy = batching.default_queue_policy
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
        assert policy.default_timeout_microseconds == QUEUE_TIMEOUT_MS * 1000
        assert policy.allow_timeout_override and policy.max_queue_size == 4 * 32
    # Later steps only see what the first admitted: no policy there.
    assert not configs["postprocess"].dynamic_batching.HasField("default_queue_policy")
    explicit = BuildConfig(run_dir="", out="", queue_timeout_ms=500)
    assert explicit.queue_timeout("cpu") == explicit.queue_timeout("trt") == 500
    with pytest.raises(ConfigError):
        BuildConfig(run_dir="", out="", max_queue_size=-1)


def test_queue_bound_from_the_release_that_fixed_the_ensemble_crash() -> None:
    """core#466 is fixed from Triton 26.02 (build/releases.py): from there NVIDIA-container
    targets reject past four full batches per instance; before it, and on the embedded 2.51
    (--target cpu), only the queue timeout bounds the wait."""

    def size(target: str, release: str, **kw) -> int:
        return BuildConfig(run_dir="", out="", triton_release=release, **kw).queue_size(target)

    assert size("trt", "26.02") == size("onnx", "26.07") == 4 * 32
    assert size("trt", "26.01") == size("onnx", "24.10") == 0
    assert size("cpu", "26.07") == 0
    assert size("trt", "26.07", instances=2, max_batch_size=16) == 4 * 16 * 2
    assert (
        size("trt", "26.07", max_queue_size=0) == 0 and size("cpu", "24.10", max_queue_size=7) == 7
    )


@pytest.mark.triton
def test_queue_size_bound_on_an_ensemble_step_is_refused(ensemble_repo: Path, tmp_path: Path):
    repo = shutil.copytree(ensemble_repo, tmp_path / "repo")
    _rewrite(repo, "teacher", lambda policy: setattr(policy, "max_queue_size", 4))
    with pytest.raises(ServerError, match="core#466"):
        TritonServer(ServerConfig(repo)).start()


def _failures(url: str) -> int:
    """Requests the `dcam` ensemble failed (rejected ones included), from Triton's statistics."""
    stats = grpc_sync.InferenceServerClient(url).get_inference_statistics("dcam")
    return stats.model_stats[0].inference_stats.fail.count


async def _flood(url: str, requests: int) -> list[tuple[str, float]]:
    """`requests` batches of 8 at once; (outcome, seconds) each."""
    client = grpc_aio.InferenceServerClient(url)

    async def one() -> tuple[str, float]:
        image = grpc_aio.InferInput("IMAGE", [8, 64, 64, 3], "UINT8")
        image.set_data_from_numpy(np.zeros((8, 64, 64, 3), np.uint8))
        start = time.perf_counter()
        try:
            await client.infer("dcam", [image])
            return "ok", time.perf_counter() - start
        except Exception as exc:
            return f"{exc.status()} {exc.message()}", time.perf_counter() - start

    try:
        return await asyncio.gather(*(one() for _ in range(requests)))
    finally:
        await client.close()


async def _flood_for(url: str, seconds: float) -> int:
    """Floods of 48 batches until `seconds` have passed; how many requests were rejected."""
    end, rejected = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        rejected += sum(kind != "ok" for kind, _ in await _flood(url, 48))
    return rejected


@pytest.mark.triton
def test_overload_is_rejected_and_every_file_still_scored_once(
    ensemble_repo: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    repo = shutil.copytree(ensemble_repo, tmp_path / "repo")
    for model in ("teacher", "student"):  # a queue far shorter than the load: overload
        _rewrite(repo, model, lambda p: setattr(p, "default_timeout_microseconds", 20_000))
    images = synthetic_root / "carpet" / "test"
    expected = sorted(str(p) for p in images.rglob("*.png"))
    out = tmp_path / "scores.jsonl"
    with TritonServer(ServerConfig(repo)) as server:
        outcomes = asyncio.run(_flood(server.grpc_url, 96))
        rejected = [s for kind, s in outcomes if kind != "ok"]
        assert rejected
        assert {k for k, _ in outcomes} <= {"ok", "StatusCode.UNAVAILABLE in ensemble 'dcam', "
                                            "Request timeout expired"}  # fmt: skip
        assert server.process.poll() is None  # still serving
        # Other clients flood the server while dcam-client starts: its requests queue behind
        # theirs and are rejected too, until the flood stops and its retries get through.
        failed_before = _failures(server.grpc_url)
        flood = concurrent.futures.ThreadPoolExecutor(1).submit(
            asyncio.run, _flood_for(server.grpc_url, 4.0)
        )
        args = ["score", "--dir", str(images), "--recursive", "--url", server.grpc_url]
        args += ["--batch-size", "1", "--concurrency", "8", "--output", str(out)]
        result = CliRunner().invoke(client_group, args)
        rejected_by_flood = flood.result()
        rejected_client = _failures(server.grpc_url) - failed_before - rejected_by_flood
    errors = [r["error"] for r in latest_rows(out).values() if r["error"]]
    assert result.exit_code == 0, (errors, result.output[-2000:])
    assert rejected_client > 0  # dcam-client met rejections, retried, and lost nothing
    rows = latest_rows(out)
    assert sorted(rows) == expected and all(not r["error"] for r in rows.values())
    assert len(out.read_text().splitlines()) == len(expected)  # each file once
