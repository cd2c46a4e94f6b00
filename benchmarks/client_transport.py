"""Ratio 2 with and without shared memory: dcam-client end to end over the in-process pipeline
including decoding, each measured side by side in one run, with the CPU each process spends.

Three ways to score the same PNG files of the production line, in interleaved rounds
(rounds.py: rotated order, median of per-round ratios, min-max, a `consistent` flag):
- in-process: decode, then the same ONNX graphs and maths in this process (no server);
- client, wire: dcam-client's library path against the embedded server, images in the request;
- client, shm: the same with `--shared-memory system` (images through /dev/shm);
- client, wire, queue policy: the wire path against a second server of the same model built
  with `--queue-timeout-ms 3000` (what NVIDIA's containers get by default). A config.pbtxt with
  any `default_queue_policy` makes Triton 2.51's dynamic batcher leave a request queued ~0.5 s
  (its idle wait) in about half of the pairs that arrive while the instance is busy (see
  README), which is why the embedded server's default build has none; this shows the cost.
Beside each, the CPU seconds per image of this process, tritonserver and each Python-backend
stub, from their own counters (cpu_accounting.py). Writes
benchmarks/results/client-transport-<tag>.{json,md}.

Run: `.venv/bin/python benchmarks/client_transport.py` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common
import cpu_accounting
import perf
import rounds
from pipelines import BATCH, ClientPath, InProcess, InProcessPath, OnRunner, build

from dcam.build.config import BuildConfig
from dcam.core.names import ENTRY_MODELS
from dcam.serve.server import ServerConfig, TritonServer

TARGET = 0.95  # issue 12: client end to end over in-process with decoding
RATIOS = {  # name -> (numerator, denominator)
    "ratio2_wire": ("client_wire", "in_process"),
    "ratio2_shm": ("client_shm", "in_process"),
    "shm_over_wire": ("client_shm", "client_wire"),
    "ratio2_wire_queue_policy": ("client_wire_queue_policy", "in_process"),
    "default_over_queue_policy": ("client_wire", "client_wire_queue_policy"),
}


async def client_rate(url: str, paths: list[Path], out: Path, batch: int, shm: str) -> float:
    """One timed pass of dcam-client's library path (set-up not timed); images/s."""
    client = ClientPath(url, paths, out, shm, batch)
    try:
        await client.start()
        start = time.perf_counter()
        return await client.score() / (time.perf_counter() - start)
    finally:
        await client.close()


def measure(
    repos: dict[str, Path], paths: list[Path], work: Path, size: int, n_rounds: int
) -> dict:
    """The paths in interleaved rounds, each server up throughout; rounds.interleave's result.

    Args:
        repos: "default" (as dcam-build writes it: no queue policy on the embedded server) and
            "queue_policy" (the same built with `--queue-timeout-ms 3000`).
    """
    threads = BuildConfig(run_dir="", out="").session_threads(2)
    proc = InProcess(repos["default"], threads)
    with (
        TritonServer(ServerConfig(repos["default"], ready_timeout_s=180)) as server,
        TritonServer(ServerConfig(repos["queue_policy"], ready_timeout_s=180)) as policed,
        asyncio.Runner() as runner,
    ):
        clients = {
            name: OnRunner(runner, ClientPath(url, paths, work / f"{name}.jsonl", mode, BATCH))
            for name, url, mode in (
                ("client_wire", server.grpc_url, "none"),
                ("client_shm", server.grpc_url, "system"),
                ("client_wire_queue_policy", policed.grpc_url, "none"),
            )
        }
        configs = {"in_process": InProcessPath(proc, paths=paths, size=size), **clients}
        pids = {"server": server.process.pid, "policy server": policed.process.pid}
        urls = {"server": server.http_url, "policy server": policed.http_url}
        probes = {
            "cpu_s": cpu_accounting.CpuCounters(pids),
            "triton": lambda: perf.stats_counters(urls),
        }
        try:
            return rounds.interleave(configs, n_rounds, probes)
        finally:
            for client in clients.values():
                client.close()


def summarise(result: dict) -> dict:
    rates = result["images_per_s"]
    cpu, triton = result["deltas"]["cpu_s"], result["deltas"]["triton"]
    return {
        "images_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "ratios": {name: rounds.ratio(rates, a, b) for name, (a, b) in RATIOS.items()},
        "cpu_s_per_image": {
            name: cpu_accounting.per_image(cpu[name], result["images"][name]) for name in rates
        },
        "queue_ms_per_request": {
            name: perf.queue_ms_per_request(triton[name]) for name in rates if name != "in_process"
        },
        "target": f">= {TARGET}",
    }


def queue_rows(queue: dict[str, dict[str, float]]) -> list[str]:
    """Markdown: each image-taking model's mean queue time per request under each client."""
    configs = list(queue)
    models = sorted({m for q in queue.values() for m in q if m.endswith(ENTRY_MODELS)})
    rows = ["| queue ms per request | " + " | ".join(configs) + " |"]
    rows.append("|---" * (len(configs) + 1) + "|")
    for model in models:
        cells = " | ".join(f"{queue[c][model]:.0f}" if model in queue[c] else "-" for c in configs)
        rows.append(f"| {model} | {cells} |")
    return rows


def report(payload: dict) -> str:
    s, m = payload["summary"], payload["summary"]["images_per_s"]
    targets = {"ratio2_wire": s["target"], "ratio2_shm": s["target"]}
    return "\n".join(
        [
            f"# Ratio 2 with and without shared memory ({payload['tag']})",
            "",
            f"{payload['images']} PNG files at {payload['size']} px, batch 8, 4 requests in "
            f"flight, {payload['rounds']} interleaved rounds; commit "
            f"{payload['stamp']['commit']}, {payload['stamp']['machine']['cores']} cores.",
            "",
            *rounds.ratio_rows(s["ratios"], targets),
            "",
            *cpu_accounting.cpu_rows(s["cpu_s_per_image"], m),
            "",
            *queue_rows(s["queue_ms_per_request"]),
            "",
        ]
    )


def main() -> None:
    args, work, run = common.client_load_setup(__doc__, rounds=5)
    repos = {
        "default": build(run, work, args.layout),
        "queue_policy": build(run, work, args.layout, "-queue-policy", queue_timeout_ms=3000),
    }
    paths = common.production_files(work / "line", args.images, args.size)
    result = measure(repos, paths, work, args.size, args.rounds)
    payload = {
        **common.client_load_head(args, len(paths)),
        "summary": summarise(result),
        "interleaved": result,
    }
    common.publish(f"client-transport-{args.tag}", payload, report)


if __name__ == "__main__":
    main()
