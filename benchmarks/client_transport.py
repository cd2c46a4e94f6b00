"""Ratio 2 with and without shared memory: dcam-client end to end over the in-process pipeline
including decoding, each measured side by side in one run.

Three ways to score the same PNG files of the production line, interleaved round by round so a
noisy neighbour hits all of them alike:
- in-process: decode, then the same ONNX graphs and maths in this process (no server);
- client, wire: dcam-client's library path against the embedded server, images in the request;
- client, shm: the same with `--shared-memory system` (images through /dev/shm).
Writes benchmarks/results/client-transport-<tag>.{json,md}.

Run: `.venv/bin/python benchmarks/client_transport.py` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common
from throughput import InProcess, build

from dcam.build.config import BuildConfig
from dcam.client.results import ResultWriter
from dcam.client.score import ScoreConfig, Scorer
from dcam.core.images import load_image
from dcam.serve.server import ServerConfig, TritonServer

TARGET = 0.95  # issue 12: client end to end over in-process with decoding


def in_process_rate(proc: InProcess, paths: list[Path], size: int, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        proc(np.stack([load_image(p, size) for p in paths[i : i + batch]]))
    return len(paths) / (time.perf_counter() - start)


async def client_rate(url: str, paths: list[Path], out: Path, batch: int, shm: str) -> float:
    """dcam-client's library path: decode, send, results written and flushed."""
    scorer = Scorer(ScoreConfig(urls=(url,), batch_size=batch, concurrency=4, shared_memory=shm))
    try:
        await scorer.start()
        if shm == "system":
            assert scorer.pool.notes == [f"{url}: images through shared memory"], scorer.pool.notes
        start = time.perf_counter()
        with ResultWriter(out) as writer:
            async for result in scorer.stream(paths):
                assert result.ok, result.error
                writer.write(result)
        return len(paths) / (time.perf_counter() - start)
    finally:
        await scorer.close()


def measure(repo: Path, paths: list[Path], work: Path, size: int, rounds: int) -> dict:
    threads = BuildConfig(run_dir="", out="").session_threads(2)
    proc = InProcess(repo, threads)
    rates: dict[str, list[float]] = {"in_process": [], "client_wire": [], "client_shm": []}
    with TritonServer(ServerConfig(repo, ready_timeout_s=180)) as server:
        for mode in ("none", "system"):  # warm-up: first requests load the sessions
            asyncio.run(client_rate(server.grpc_url, paths[:16], work / "w.jsonl", 8, mode))
        in_process_rate(proc, paths[:16], size, 8)
        for r in range(rounds):
            rates["in_process"].append(in_process_rate(proc, paths, size, 8))
            for mode, key in (("none", "client_wire"), ("system", "client_shm")):
                out = work / f"{key}-{r}.jsonl"
                rates[key].append(asyncio.run(client_rate(server.grpc_url, paths, out, 8, mode)))
            print(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
            )
    return rates


def summarise(rates: dict[str, list[float]]) -> dict:
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "images_per_s": median,
        "rounds": rates,
        "ratio2_wire": median["client_wire"] / median["in_process"],
        "ratio2_shm": median["client_shm"] / median["in_process"],
        "shm_over_wire": median["client_shm"] / median["client_wire"],
        "target": f">= {TARGET}",
    }


def report(payload: dict) -> str:
    s, m = payload["summary"], payload["summary"]["images_per_s"]
    wire, shm = f"{s['ratio2_wire']:.3f}", f"{s['ratio2_shm']:.3f}"
    return "\n".join(
        [
            f"# Ratio 2 with and without shared memory ({payload['tag']})",
            "",
            f"{payload['images']} PNG files at {payload['size']} px, batch 8, 4 requests in "
            f"flight, median of {payload['rounds']} interleaved rounds; commit "
            f"{payload['stamp']['commit']}, {payload['stamp']['machine']['cores']} cores.",
            "",
            "| path | images/s | ratio 2 (over in-process with decoding) |",
            "|---|---|---|",
            f"| in-process with decoding | {m['in_process']:.1f} | 1 |",
            f"| dcam-client, images on the wire | {m['client_wire']:.1f} | {wire} |",
            f"| dcam-client, shared memory | {m['client_shm']:.1f} | {shm} |",
            "",
            f"Shared memory over wire: {s['shm_over_wire']:.3f}. Target ratio 2 {s['target']}.",
            "",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_client_load_arguments(p, rounds=5)
    args = p.parse_args()
    work = common.work_folder(args, "dcam-bench-")
    repo = build(common.benchmark_run(work, args.size), work, args.layout)
    paths = common.production_files(work / "line", args.images, args.size)
    rates = measure(repo, paths, work, args.size, args.rounds)
    payload = {
        "tag": args.tag,
        "size": args.size,
        "images": len(paths),
        "rounds": args.rounds,
        "layout": args.layout,
        "stamp": common.stamp(),
        "summary": summarise(rates),
    }
    common.publish(f"client-transport-{args.tag}", payload, report)


if __name__ == "__main__":
    main()
