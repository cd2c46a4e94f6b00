"""The ways of scoring images that the serving benchmarks compare, each set up once and then
called round after round by `rounds.interleave` (a call scores a fixed set once and returns how
many images it scored):
- `InProcess` + `InProcessPath`: the same ONNX graphs and maths in this process, on decoded
  arrays or decoding PNG files batch by batch;
- `ServedPath`: decoded batches sent to one served model over gRPC, a fixed number in flight;
- `ClientPath`: dcam-client's library path, PNG files to results written and flushed.
The served paths keep one event loop (an `asyncio.Runner`) and their connections across calls.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dcam.build.config import BuildConfig
from dcam.build.engines import build_repository
from dcam.build.parity import onnxruntime_session
from dcam.client.results import ResultWriter
from dcam.client.score import ScoreConfig, Scorer
from dcam.client.triton import Server
from dcam.core import scoring
from dcam.core.images import load_image
from dcam.core.manifest import Manifest
from dcam.core.names import IMAGE

BATCH, CONCURRENCY = 8, 4  # dcam-client's defaults: every served path uses them


def build(run: Path, work: Path, layout: str, suffix: str = "", **options) -> Path:
    """The CPU model repository of `run` in `layout` under `work` (built once); `options` are
    further BuildConfig fields, for a variant named `<layout><suffix>`."""
    out = work / f"{layout}{suffix}"
    if not out.exists():
        cfg = BuildConfig(run_dir=str(run), out=str(out), target="cpu", layout=layout, **options)
        build_repository(cfg)
    return out


class InProcess:
    """The same ONNX graphs and maths in one process: teacher || student, then the map."""

    def __init__(self, repo: Path, threads: int) -> None:
        self.teacher = onnxruntime_session(repo / "teacher" / "1" / "model.onnx", threads)
        self.student = onnxruntime_session(repo / "student" / "1" / "model.onnx", threads)
        self.pool = ThreadPoolExecutor(2)
        self.spec = Manifest.read(repo).scoring

    def __call__(self, images: np.ndarray) -> np.ndarray:
        t, s = self.pool.map(
            lambda sess: sess.run(None, {IMAGE: images}), (self.teacher, self.student)
        )
        return scoring.score(self.spec, t, s).normalised

    def features(self, images: np.ndarray) -> list[np.ndarray]:
        return self.teacher.run(None, {IMAGE: images}) + self.student.run(None, {IMAGE: images})


class InProcessPath:
    """`proc` over decoded `images`, or over PNG `paths` decoded batch by batch before each."""

    def __init__(
        self,
        proc: InProcess,
        images: np.ndarray | None = None,
        paths: list[Path] | None = None,
        size: int = 0,
    ) -> None:
        self.proc, self.images, self.paths, self.size = proc, images, paths, size

    def __call__(self) -> int:
        items = self.images if self.images is not None else self.paths
        for i in range(0, len(items), BATCH):
            batch = items[i : i + BATCH]
            if self.paths is not None:
                batch = np.stack([load_image(p, self.size) for p in batch])
            self.proc(batch)
        return len(items)


class ServedPath:
    """Decoded `images` in batches to `model` at `url`, CONCURRENCY requests in flight, asking
    only for `outputs` (scalars per image, as the client does)."""

    def __init__(
        self,
        runner: asyncio.Runner,
        url: str,
        model: str,
        outputs: tuple[str, ...],
        images: np.ndarray,
    ) -> None:
        self.runner, self.model, self.outputs = runner, model, outputs
        self.batches = [images[i : i + BATCH] for i in range(0, len(images), BATCH)]
        self.server = runner.run(self._connect(url))  # the channel binds to the runner's loop

    @staticmethod
    async def _connect(url: str) -> Server:
        return Server(url, "grpc")

    async def _send(self, slots: asyncio.Semaphore, batch: np.ndarray) -> None:
        async with slots:
            await self.server.infer(self.model, batch, {}, 60.0, self.outputs)

    async def _send_all(self) -> None:
        slots = asyncio.Semaphore(CONCURRENCY)
        await asyncio.gather(*(self._send(slots, b) for b in self.batches))

    def __call__(self) -> int:
        self.runner.run(self._send_all())
        return sum(len(b) for b in self.batches)

    def close(self) -> None:
        self.runner.run(self.server.close())


class ClientPath:
    """dcam-client's library path: decode on its threads, send, results written and flushed."""

    def __init__(
        self,
        url: str,
        paths: list[Path],
        out: Path,
        shared_memory: str = "none",
        batch: int = BATCH,
    ) -> None:
        self.paths, self.out, self.shared_memory = paths, out, shared_memory
        config = ScoreConfig(
            urls=(url,), batch_size=batch, concurrency=CONCURRENCY, shared_memory=shared_memory
        )
        self.scorer = Scorer(config)

    async def start(self) -> None:
        await self.scorer.start()
        if self.shared_memory == "system":
            url = self.scorer.config.urls[0]
            notes = self.scorer.pool.notes
            assert notes == [f"{url}: images through shared memory"], notes

    async def score(self) -> int:
        n = 0
        with ResultWriter(self.out) as writer:
            async for result in self.scorer.stream(self.paths):
                assert result.ok, result.error
                writer.write(result)
                n += 1
        return n

    async def close(self) -> None:
        await self.scorer.close()


class OnRunner:
    """A `ClientPath` started on `runner`, called synchronously for `rounds.interleave`."""

    def __init__(self, runner: asyncio.Runner, client: ClientPath) -> None:
        self.runner, self.client = runner, client
        runner.run(client.start())

    def __call__(self) -> int:
        return self.runner.run(self.client.score())

    def close(self) -> None:
        self.runner.run(self.client.close())
