"""A run of `dcam-client score`: list the images under a folder (with `watch`, also those that land
later), stream them through a `Scorer`, write each result (and heatmap) as it arrives, stop
cleanly on SIGINT/SIGTERM, and tell which failures the exit status counts.

Reads the images under `RunConfig.root` and, with `resume`, the earlier `output`; writes `output`,
the `heatmaps` folder and the `summary_json`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dcam.client import files
from dcam.client.files import HotFolder, list_files
from dcam.client.heatmap import heatmap_path, product_scale, render_heatmap
from dcam.client.results import Result, ResultWriter, compact, has_error, open_results
from dcam.client.score import CategoryOf, ScoreConfig, Scorer
from dcam.client.summary import Tally
from dcam.core.errors import Aborted, ClientError, ConfigError
from dcam.core.images import load_image
from dcam.core.scoring import ScoringSpec


@dataclass(frozen=True)
class RunConfig:
    """What to score and where its results go: the `dcam-client score` flags that are not
    `ScoreConfig`'s, each field named as its option."""

    root: str  # --dir: the folder of images
    recursive: bool = False  # also images in sub-folders
    pattern: str = "*"  # --glob: only paths (relative to root) matching
    output: str = "scores.jsonl"  # .jsonl or .csv, written as results arrive
    heatmaps: str | None = None  # folder for PNG overlays; None: no maps are even requested
    resume: bool = False  # continue `output`: skip what is settled there
    retry_failed: bool = False  # with resume, score permanent failures again too
    force: bool = False  # overwrite an existing `output`
    watch: bool = False  # keep scoring files that land until SIGINT/SIGTERM
    settle: float = 2.0  # with watch: seconds a file must stay unchanged (without a close event)
    category_from_path: bool = False  # each image's product from its folder
    summary_json: str | None = None  # the closing summary, per product, as JSON


@dataclass
class Outcome:
    """What a run leaves for the command line to report."""

    tally: Tally
    skipped: int  # files already settled in `output` (resume)
    folders: list[Path] = field(default_factory=list)  # named like images but folders
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, error): exit 1
    stopped_by: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM)
    left: int = 0  # files listed but not scored because of that stop: --resume scores them


def _write_heatmap(
    result: Result, folder: Path, root: Path, size: int, scoring: ScoringSpec
) -> None:
    image = load_image(result.path, size)
    scale = product_scale(scoring, result.category)
    png = render_heatmap(image, result.anomaly_map, result.score, result.is_anomalous, scale)
    out = heatmap_path(folder, result.path, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    png.save(out, compress_level=1)  # level 6 took 37 ms a heatmap, level 1 17 ms, 7% larger


class HeatmapWriter:
    """Writes heatmaps on the decoder threads, so rendering and PNG compression (about 25 ms
    each) never stall the event loop that keeps requests in flight; at most `limit` pending."""

    def __init__(self, scorer: Scorer, folder: Path, root: Path, limit: int) -> None:
        self.scorer, self.folder, self.root, self.limit = scorer, folder, root, limit
        self.pending: set[asyncio.Future] = set()

    async def add(self, result: Result) -> None:
        if len(self.pending) >= self.limit:
            done, self.pending = await asyncio.wait(
                self.pending, return_when=asyncio.FIRST_COMPLETED
            )
            for future in done:
                future.result()  # a heatmap that cannot be written (disk full) stops the run
        size, spec = self.scorer.size[0], self.scorer.scoring
        self.pending.add(
            asyncio.get_running_loop().run_in_executor(
                self.scorer.decoders, _write_heatmap, result, self.folder, self.root, size, spec
            )
        )

    async def finish(self) -> None:
        await asyncio.gather(*self.pending)
        self.pending.clear()


class Stop:
    """SIGINT and SIGTERM: the first stops sending (what is in flight finishes, results are
    written, the summary counts what is left); the second cancels the run at once."""

    def __init__(self, note: Callable[[str], None]) -> None:
        self.event = asyncio.Event()
        self.signum: int | None = None
        self.aborted = False
        self._note = note
        self._task: asyncio.Task | None = None

    def install(self) -> None:
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signalled, sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    def _signalled(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            self.event.set()
            self._note(f"{name}: stopping; requests in flight finish (again to abort)")
            return
        self.aborted = True
        self._note(f"{name} again: aborting")
        self._task.cancel()


async def _loop(
    paths: list[Path],
    cfg: ScoreConfig,
    writer: ResultWriter,
    tally: Tally,
    heatmaps: Path | None,
    root: Path,
    hot: HotFolder | None,
    category_of: CategoryOf | None,
    note: Callable[[str], None],
    stop: Stop,
) -> int:
    """Score `paths` (and with `hot`, what lands) until done or stopped; returns how many
    listed files were left unscored."""
    scorer = Scorer(cfg)
    stop.install()
    try:
        await scorer.start()
        for line in scorer.pool.notes:
            note(line)
        if hot is not None:
            note(f"watching {root}: {hot.mode}")
        if heatmaps is not None and scorer.scoring is None:
            raise ClientError(
                f"model {cfg.model!r} publishes no calibration (built by an older dcam-build), "
                "so heatmaps cannot share one scale per product: rebuild the repository"
            )
        tally.start = time.perf_counter()  # throughput of scoring, not of waiting for a server
        heatmap_writer = (
            HeatmapWriter(scorer, heatmaps, root, 2 * scorer.config.workers) if heatmaps else None
        )
        bar = tqdm(total=len(paths), unit="img", dynamic_ncols=True)
        batches = [paths]
        while batches and not stop.event.is_set():
            async for result in scorer.stream(batches.pop(), category_of, stop.event):
                writer.write(result)
                tally.add(result)
                if hot is not None:
                    hot.done(result.path, result.ok)
                if heatmap_writer is not None and result.ok:
                    await heatmap_writer.add(result)
                bar.update(1)
                bar.set_postfix(anomalous=tally.anomalous, failed=len(tally.failures))
            while hot is not None and not batches and not stop.event.is_set():
                new = hot.poll()
                if new:
                    bar.total += len(new)
                    batches.append(new)
                else:
                    await asyncio.wait([asyncio.create_task(stop.event.wait())], timeout=0.5)
        if heatmap_writer is not None:
            await heatmap_writer.finish()
        bar.close()
        return bar.total - bar.n
    except asyncio.CancelledError:
        if stop.aborted:
            raise Aborted(
                f"aborted by a second {signal.Signals(stop.signum).name}: the results written "
                f"so far are in {writer.path}; --resume scores the rest"
            ) from None
        raise
    finally:
        stop.remove()
        if hot is not None:
            hot.close()
        await scorer.close()


def _failures(run: RunConfig, tally: Tally) -> list[tuple[str, str]]:
    """The failures the exit status counts: what the output holds. With resume, failures kept
    from earlier runs count too, and files scored now replace their earlier failed rows."""
    if run.resume or run.watch:  # a file scored again supersedes its earlier failed row
        return [(r["path"], r["error"]) for r in compact(Path(run.output)) if has_error(r)]
    return [(f.path, f.error) for f in tally.failures]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def score_folder(
    cfg: ScoreConfig, run: RunConfig, note: Callable[[str], None] = _to_stderr
) -> Outcome:
    """Score every image under `run.root` (until SIGINT/SIGTERM with `watch`).

    Args:
        note: what to do with the server pool's notes (e.g. shared memory turned off).

    Raises:
        ConfigError: contradicting options; ClientError: no server, or no calibration for
            heatmaps.
    """
    root = Path(run.root)
    if cfg.category and run.category_from_path:
        raise ConfigError("give --category or --category-from-path, not both")
    category_of = (
        functools.partial(files.category_from_path, root=root) if run.category_from_path else None
    )
    if run.retry_failed and not run.resume:
        raise ConfigError("--retry-failed continues an output: give it with --resume")
    writer, done = open_results(Path(run.output), run.resume, run.force, run.retry_failed)
    folders: list[Path] = []  # named like images but folders: reported, not scored
    listed = list_files(root, run.recursive, run.pattern, skipped=folders)
    paths = [p for p in listed if os.fsdecode(p) not in done]
    if run.settle < 0:
        raise ConfigError("--settle is a number of seconds, 0 or more")
    seen = done | {os.fsdecode(p) for p in paths}
    hot = HotFolder(root, run.recursive, run.pattern, seen, run.settle) if run.watch else None
    tally = Tally()
    heatmaps = Path(run.heatmaps) if run.heatmaps else None
    stop = Stop(note)
    with writer:
        left = asyncio.run(
            _loop(paths, cfg, writer, tally, heatmaps, root, hot, category_of, note, stop)
        )
    if run.summary_json:
        tally.write_json(Path(run.summary_json))
    return Outcome(tally, len(done), folders, _failures(run, tally), stop.signum, left)
