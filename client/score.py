"""Score production-line images through Triton: decode in a worker pool, batch, send with a
bounded number of requests in flight, and stream results back as they arrive.

Every path given comes back exactly once, with a score or with its error.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcam.client.results import Result
from dcam.client.triton import ServerPool
from dcam.core.errors import ClientError, ConfigError, ImageError
from dcam.core.images import load_image
from dcam.core.names import ANOMALY_MAP, DECISION_OUTPUTS, IS_ANOMALOUS, OUTPUTS, SCORE


@dataclass(frozen=True)
class ScoreConfig:
    """How to score; `dcam-client score` flags map onto these fields and take their defaults."""

    urls: tuple[str, ...] = ("127.0.0.1:8001",)
    protocol: str = "grpc"  # grpc by default; http on request
    model: str = "dcam"
    batch_size: int = 8
    concurrency: int = 4  # requests in flight
    workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))  # decoders
    timeout_s: float = 30.0  # per request
    retries: int = 6  # attempts per batch after the first; back-off doubles up to 30 s
    ready_timeout_s: float = 60.0
    threshold: float | None = None  # overrides the deployed threshold
    keep_maps: bool = False  # return anomaly maps (for heatmaps)


def _decode(path: Path, size: int) -> np.ndarray | str:
    """The model-size RGB image, or the reason it cannot be decoded."""
    try:
        return load_image(path, size)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug must not lose the file from the output
        return f"{path}: {type(exc).__name__}: {exc}"


def _batches(paths: Iterable[Path], size: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    for path in paths:
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Scorer:
    """Holds the server pool and decoder pool; `stream` yields Results as they complete."""

    def __init__(self, config: ScoreConfig) -> None:
        if config.batch_size < 1 or config.concurrency < 1:
            raise ConfigError("batch_size and concurrency must be at least 1")
        self.config = config
        self.pool = ServerPool(
            list(config.urls), config.protocol, config.model, config.timeout_s, config.retries
        )
        self.decoders = ThreadPoolExecutor(config.workers, thread_name_prefix="dcam-decode")
        self.size: tuple[int, int] | None = None

    async def start(self) -> None:
        spec = await self.pool.wait_ready(self.config.ready_timeout_s)
        if spec.height != spec.width:
            raise ClientError(f"model input {spec.height}x{spec.width} is not square")
        self.size = (spec.height, spec.width)

    async def close(self) -> None:
        await self.pool.close()
        self.decoders.shutdown(wait=True)

    async def _score_batch(self, paths: list[Path]) -> list[Result]:
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.decoders, _decode, p, self.size[0]) for p in paths)
        )
        results = {
            i: Result(os.fsdecode(p), error=d)
            for i, (p, d) in enumerate(zip(paths, decoded, strict=True))
            if isinstance(d, str)
        }
        good = [i for i in range(len(paths)) if i not in results]
        if good:
            start = time.perf_counter()
            try:
                out = await self.pool.infer(
                    np.stack([decoded[i] for i in good]),
                    self.config.threshold,
                    OUTPUTS if self.config.keep_maps else DECISION_OUTPUTS,
                )
            except ClientError as exc:
                out = None
                for i in good:
                    results[i] = Result(os.fsdecode(paths[i]), error=f"inference failed: {exc}")
            latency = (time.perf_counter() - start) * 1000
            for k, i in enumerate(good if out is not None else []):
                results[i] = Result(
                    os.fsdecode(paths[i]),
                    score=float(out[SCORE][k, 0]),
                    is_anomalous=bool(out[IS_ANOMALOUS][k, 0]),
                    latency_ms=latency,
                    anomaly_map=out[ANOMALY_MAP][k] if self.config.keep_maps else None,
                )
        return [results[i] for i in range(len(paths))]

    async def stream(self, paths: Iterable[Path]) -> AsyncIterator[Result]:
        """Results in completion order; at most `concurrency` batches in flight."""
        if self.size is None:
            await self.start()
        pending: set[asyncio.Task] = set()
        for batch in _batches(paths, self.config.batch_size):
            if len(pending) >= self.config.concurrency:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    for result in task.result():
                        yield result
            pending.add(asyncio.create_task(self._score_batch(batch)))
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                for result in task.result():
                    yield result


async def score_paths(paths: Iterable[Path], config: ScoreConfig) -> list[Result]:
    """Convenience: score everything and return the results in completion order."""
    scorer = Scorer(config)
    try:
        return [r async for r in scorer.stream(paths)]
    finally:
        await scorer.close()
