"""Score production-line images through Triton: decode in a worker pool, batch, send with a
bounded number of requests in flight, and stream results back as they arrive.

Every path given comes back exactly once, with a score or with its error, and, where the model
answers it, the calibration that decided it (`<build_id>/<version>`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcam.client.discovery import Resolver, resolve_addresses
from dcam.client.results import Result
from dcam.client.transport import ClientTls
from dcam.client.triton import ModelSpec, ServerPool
from dcam.core.errors import ClientError, ConfigError, ImageError, RetryableError
from dcam.core.images import load_image
from dcam.core.names import (
    ANOMALY_MAP,
    CALIBRATION_VERSION,
    DECISION_OUTPUTS,
    IS_ANOMALOUS,
    OUTPUTS,
    SCORE,
)
from dcam.core.network import DEFAULT_GRPC_PORT
from dcam.core.scoring import ScoringSpec, request_parameters


@dataclass(frozen=True)
class ScoreConfig:
    """How to score; `dcam-client score` flags map onto these fields and take their defaults."""

    urls: tuple[str, ...] = (f"127.0.0.1:{DEFAULT_GRPC_PORT}",)
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
    category: str | None = None  # the product every image is; None: the global calibration
    shared_memory: str = "auto"  # auto: through /dev/shm to servers on loopback; system; none
    tls: ClientTls | None = None  # gRPC over TLS
    api_key: str | None = None  # sent as the header that unlocks restricted APIs
    resolve_every_s: float = 10.0  # how often dns:/// names are resolved again


def _decode(path: Path, size: int) -> np.ndarray | str:
    """The model-size RGB image, or the reason it cannot be decoded."""
    try:
        return load_image(path, size)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug must not lose the file from the output
        return f"{path}: {type(exc).__name__}: {exc}"


CategoryOf = Callable[[Path], "str | None"]


def _batches(
    items: Iterable[tuple[Path, str | None]], size: int
) -> Iterator[tuple[str | None, list[Path]]]:
    """Batches of at most `size` paths of one product each: a request names one category."""
    batch: list[Path] = []
    current: str | None = None
    for path, category in items:
        if batch and (len(batch) == size or category != current):
            yield current, batch
            batch = []
        current = category
        batch.append(path)
    if batch:
        yield current, batch


class Scorer:
    """Holds the server pool and decoder pool; `stream` yields Results as they complete."""

    def __init__(self, config: ScoreConfig, resolver: Resolver = resolve_addresses) -> None:
        if config.batch_size < 1 or config.concurrency < 1:
            raise ConfigError("batch_size and concurrency must be at least 1")
        self.config = config
        self.pool = ServerPool(
            list(config.urls),
            config.protocol,
            config.model,
            config.timeout_s,
            config.retries,
            tls=config.tls,
            api_key=config.api_key,
            resolver=resolver,
            resolve_every_s=config.resolve_every_s,
        )
        self.decoders = ThreadPoolExecutor(config.workers, thread_name_prefix="dcam-decode")
        self.size: tuple[int, int] | None = None
        self.scoring: ScoringSpec | None = None  # what the served model publishes (heatmaps)
        self.spec: ModelSpec | None = None  # its inputs, outputs and build, read at start

    async def start(self) -> None:
        spec = await self.pool.wait_ready(self.config.ready_timeout_s)
        if spec.height != spec.width:
            raise ClientError(f"model input {spec.height}x{spec.width} is not square")
        self.size = (spec.height, spec.width)
        self.scoring, self.spec = spec.scoring, spec
        if self.scoring is not None and self.config.category is not None:
            try:  # the same rule the server applies: refuse now, not once per file
                self.scoring.calibration_for(self.config.category)
            except ValueError as exc:
                raise ClientError(f"--category: model {self.config.model!r}: {exc}") from exc
        batch_bytes = self.config.batch_size * spec.height * spec.width * 3  # UINT8 RGB
        await self.pool.use_shared_memory(
            self.config.shared_memory, self.config.concurrency, batch_bytes
        )

    async def close(self) -> None:
        await self.pool.close()
        self.decoders.shutdown(wait=True)

    async def _score_batch(self, category: str | None, paths: list[Path]) -> list[Result]:
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.decoders, _decode, p, self.size[0]) for p in paths)
        )
        results = {
            i: Result(os.fsdecode(p), category=category, error=d, retryable=False)
            for i, (p, d) in enumerate(zip(paths, decoded, strict=True))
            if isinstance(d, str)
        }
        good = [i for i in range(len(paths)) if i not in results]
        if good:
            start = time.perf_counter()
            try:
                out = await self.pool.infer(
                    np.stack([decoded[i] for i in good]),
                    request_parameters(self.config.threshold, category),
                    self.spec.output_names(OUTPUTS if self.config.keep_maps else DECISION_OUTPUTS),
                )
            except ClientError as exc:
                out = None
                for i in good:
                    results[i] = Result(
                        os.fsdecode(paths[i]),
                        category=category,
                        error=f"inference failed: {exc}",
                        retryable=isinstance(exc, RetryableError),  # retries ran out, not refused
                    )
            latency = (time.perf_counter() - start) * 1000
            for k, i in enumerate(good if out is not None else []):
                results[i] = Result(
                    os.fsdecode(paths[i]),
                    category=category,
                    score=float(out[SCORE][k, 0]),
                    is_anomalous=bool(out[IS_ANOMALOUS][k, 0]),
                    latency_ms=latency,
                    anomaly_map=out[ANOMALY_MAP][k] if self.config.keep_maps else None,
                    calibration=self._calibration(out, k),
                )
        return [results[i] for i in range(len(paths))]

    def _calibration(self, out: dict, k: int) -> str | None:
        """Image k's calibration, `<build_id>/<version>`; None where the model answers none."""
        if CALIBRATION_VERSION not in out:
            return None
        return self.spec.calibration(int(out[CALIBRATION_VERSION][k, 0]))

    def _categorised(
        self, paths: Iterable[Path], category_of: CategoryOf | None, failed: list[Result]
    ) -> Iterator[tuple[Path, str | None]]:
        """(path, product): `category_of(path)` per image, else the configured category; a path
        whose product cannot be told becomes a failed result instead of a global score."""
        for path in paths:
            if category_of is None:
                yield path, self.config.category
                continue
            try:
                yield path, category_of(path)
            except ClientError as exc:
                failed.append(Result(os.fsdecode(path), error=str(exc), retryable=False))

    async def stream(
        self,
        paths: Iterable[Path],
        category_of: CategoryOf | None = None,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[Result]:
        """Results in completion order; at most `concurrency` batches in flight.

        Args:
            category_of: the product of each image (its calibration is applied); by default
                the configured `category` for all, or the global calibration without one.
            stop: once set, no new batch is sent; the batches in flight finish and come back,
                and the paths not yet sent are left out (a resumed run scores them).
        """
        if self.size is None:
            await self.start()
        pending: set[asyncio.Task] = set()
        failed: list[Result] = []
        items = self._categorised(paths, category_of, failed)
        for category, batch in _batches(items, self.config.batch_size):
            while failed:
                yield failed.pop()
            if stop is not None and stop.is_set():
                break
            if len(pending) >= self.config.concurrency:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    for result in task.result():
                        yield result
            if stop is not None and stop.is_set():  # set while this batch waited for a slot
                break
            pending.add(asyncio.create_task(self._score_batch(category, batch)))
        while failed:
            yield failed.pop()
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
