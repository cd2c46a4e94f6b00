"""Command line: `dcam-client score --dir DIR`, `dcam-client status` (the line, from Triton's
metrics) and `dcam-client auroc` (for labelled folders).

`score` options map onto `ScoreConfig` fields and take their defaults from there; only this
layer turns library errors into messages and exit codes (through `reports_errors`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from dcam.client import files
from dcam.client.files import HotFolder, list_files
from dcam.client.heatmap import heatmap_path, product_scale, render_heatmap
from dcam.client.results import (
    Result,
    ResultWriter,
    compact,
    has_error,
    is_true,
    latest_rows,
    open_results,
)
from dcam.client.score import CategoryOf, ScoreConfig, Scorer
from dcam.client.status import format_status, line_status, scrape
from dcam.client.summary import Tally
from dcam.client.transport import ClientTls
from dcam.client.triton import SHM_MODES
from dcam.core.cli import EXISTING_FILE, default, reports_errors
from dcam.core.errors import ClientError, ConfigError
from dcam.core.images import load_image
from dcam.core.metrics import auroc
from dcam.core.scoring import ScoringSpec


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


async def _run(
    paths: list[Path],
    cfg: ScoreConfig,
    writer: ResultWriter,
    tally: Tally,
    heatmaps: Path | None,
    root: Path,
    hot: HotFolder | None,
    category_of: CategoryOf | None,
) -> None:
    scorer = Scorer(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await scorer.start()
        for note in scorer.pool.notes:
            click.echo(note, err=True)
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
        while batches and not stop.is_set():
            async for result in scorer.stream(batches.pop(), category_of):
                writer.write(result)
                tally.add(result)
                if heatmap_writer is not None and result.ok:
                    await heatmap_writer.add(result)
                bar.update(1)
                bar.set_postfix(anomalous=tally.anomalous, failed=len(tally.failures))
            while hot is not None and not batches and not stop.is_set():
                new = hot.poll()
                if new:
                    bar.total += len(new)
                    batches.append(new)
                else:
                    await asyncio.wait([asyncio.create_task(stop.wait())], timeout=1.0)
        if heatmap_writer is not None:
            await heatmap_writer.finish()
        bar.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await scorer.close()


@click.group()
def client_group() -> None:
    """Score production-line images with a dcam model served by Triton."""


def _d(name: str):
    return default(ScoreConfig, name)


def _tls(on: bool, root: str | None, cert: str | None, key: str | None) -> ClientTls | None:
    if not (on or root or cert or key):
        return None
    return ClientTls(*(Path(p) if p else None for p in (root, cert, key)))


@client_group.command("score", context_settings={"show_default": True})
@click.option(
    "--dir",
    "root",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder of images to score.",
)
@click.option("--recursive", is_flag=True, help="Also score images in sub-folders.")
@click.option("--glob", "pattern", default="*", help="Only paths (relative to --dir) matching.")
@click.option(
    "--url",
    "urls",
    multiple=True,
    default=_d("urls"),
    help="Triton server host:port, or dns:///name:port for every replica behind a name (a "
    "headless Service); repeat to spread batches over several.",
)
@click.option(
    "--resolve-every",
    type=float,
    default=_d("resolve_every_s"),
    help="Seconds between resolutions of dns:/// names (replicas come and go).",
)
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default=_d("protocol"))
@click.option("--batch-size", type=int, default=_d("batch_size"))
@click.option("--concurrency", type=int, default=_d("concurrency"), help="Requests in flight.")
@click.option("--workers", type=int, default=_d("workers"), help="Decoders.")
@click.option(
    "--output",
    default="scores.jsonl",
    type=click.Path(dir_okay=False),
    help="Results file, .jsonl or .csv, written as results arrive.",
)
@click.option(
    "--heatmaps",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for PNG heatmap overlays.",
)
@click.option(
    "--threshold",
    type=float,
    default=_d("threshold"),
    help="Override the deployed decision threshold (normalised score).",
)
@click.option(
    "--category",
    default=_d("category"),
    help="The product every image is: its calibration (normalisation, threshold) applies.",
)
@click.option(
    "--category-from-path",
    is_flag=True,
    help="Each image's product from its folder: <category>/test/... (MVTec) or <category>/...",
)
@click.option("--model", default=_d("model"))
@click.option("--timeout", type=float, default=_d("timeout_s"), help="Per-request timeout, s.")
@click.option(
    "--retries", type=int, default=_d("retries"), help="Attempts per batch after the first."
)
@click.option(
    "--ready-timeout",
    type=float,
    default=_d("ready_timeout_s"),
    help="How long to wait for a ready server at start.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue --output: skip scored files and permanent failures, score again files whose "
    "error was transient (server away or overloaded); each file stays once in the output.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="With --resume, also score again files whose error was permanent (e.g. undecodable).",
)
@click.option(
    "--shared-memory",
    type=click.Choice(SHM_MODES),
    default=_d("shared_memory"),
    help="Images through /dev/shm instead of the wire: auto (servers on loopback), system (all; "
    "a refusal is an error), none.",
)
@click.option("--tls", "tls_on", is_flag=True, help="gRPC over TLS, trusting the system's CAs.")
@click.option(
    "--tls-root-cert", type=EXISTING_FILE, default=None, help="PEM CA to trust (implies --tls)."
)
@click.option(
    "--tls-cert", type=EXISTING_FILE, default=None, help="PEM client certificate: mutual TLS."
)
@click.option("--tls-key", type=EXISTING_FILE, default=None, help="PEM key of --tls-cert.")
@click.option(
    "--api-key",
    envvar="DCAM_API_KEY",
    default=None,
    help="Key to the server's restricted APIs (dcam-serve --api-key); prefer DCAM_API_KEY.",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the closing summary, with per-product anomaly rates, as JSON.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --output.")
@click.option("--watch", is_flag=True, help="Keep scoring new files as they land (Ctrl-C ends).")
@reports_errors
def score_command(
    root: str,
    recursive: bool,
    pattern: str,
    output: str,
    heatmaps: str | None,
    resume: bool,
    retry_failed: bool,
    force: bool,
    watch: bool,
    urls: tuple[str, ...],
    protocol: str,
    batch_size: int,
    concurrency: int,
    workers: int,
    threshold: float | None,
    category: str | None,
    category_from_path: bool,
    model: str,
    timeout: float,
    retries: int,
    ready_timeout: float,
    shared_memory: str,
    tls_on: bool,
    tls_root_cert: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    api_key: str | None,
    resolve_every: float,
    summary_json: str | None,
) -> None:
    """Score every image under --dir; exit status 1 if any file failed."""
    out = Path(output)
    cfg = ScoreConfig(
        urls=urls,
        protocol=protocol,
        model=model,
        batch_size=batch_size,
        concurrency=concurrency,
        workers=workers,
        timeout_s=timeout,
        retries=retries,
        ready_timeout_s=ready_timeout,
        threshold=threshold,
        keep_maps=heatmaps is not None,
        category=category,
        shared_memory=shared_memory,
        tls=_tls(tls_on, tls_root_cert, tls_cert, tls_key),
        api_key=api_key,
        resolve_every_s=resolve_every,
    )
    if category and category_from_path:
        raise ConfigError("give --category or --category-from-path, not both")
    category_of = (
        functools.partial(files.category_from_path, root=Path(root)) if category_from_path else None
    )
    if retry_failed and not resume:
        raise ConfigError("--retry-failed continues an output: give it with --resume")
    writer, done = open_results(out, resume, force, retry_failed)
    folders: list[Path] = []  # named like images but folders: reported, not scored
    listed = list_files(Path(root), recursive, pattern, skipped=folders)
    paths = [p for p in listed if os.fsdecode(p) not in done]
    hot = (
        HotFolder(Path(root), recursive, pattern, done | {os.fsdecode(p) for p in paths})
        if watch
        else None
    )
    tally = Tally()
    with writer:
        asyncio.run(
            _run(
                paths,
                cfg,
                writer,
                tally,
                Path(heatmaps) if heatmaps else None,
                Path(root),
                hot,
                category_of,
            )
        )
    click.echo(tally.summary() + (f"\n(skipped {len(done)} already in {out})" if done else ""))
    if summary_json:
        tally.write_json(Path(summary_json))
    if folders:
        names = ", ".join(os.fsdecode(f) for f in folders[:5])
        names += ", ..." if len(folders) > 5 else ""
        click.echo(f"skipped {len(folders)} folders named like images (not files): {names}")
    # The exit status is what the output holds: with --resume, failures kept from earlier runs
    # count too, and files scored now replace their earlier failed rows.
    failures = (
        [(r["path"], r["error"]) for r in compact(out) if has_error(r)]
        if resume
        else [(f.path, f.error) for f in tally.failures]
    )
    if failures:
        for path, error in failures[:50]:
            click.echo(f"FAILED {path}: {error}", err=True)
        click.echo(f"{len(failures)} failed files in {out}", err=True)
        raise SystemExit(1)


@client_group.command("auroc")
@click.argument("results", type=click.Path(dir_okay=False, exists=True))
@reports_errors
def auroc_command(results: str) -> None:
    """Image AUROC and the served decisions' TPR/FPR of a results file whose paths sit in
    good/ or <defect>/ folders."""
    rows = [r for r in latest_rows(Path(results)).values() if r.get("score") not in (None, "")]
    labels = np.array([Path(r["path"]).parent.name != "good" for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    flagged = np.array([is_true(r["is_anomalous"]) for r in rows])
    value = auroc(labels, scores)
    tpr, fpr = 100 * flagged[labels].mean(), 100 * flagged[~labels].mean()
    click.echo(
        f"image AUROC {100 * value:.2f} over {len(rows)} scored images "
        f"({int(labels.sum())} anomalous); served decisions: TPR {tpr:.1f}%, FPR {fpr:.1f}%"
    )


@client_group.command("status", context_settings={"show_default": True})
@click.option(
    "--metrics-url",
    default="http://127.0.0.1:8002/metrics",
    help="Triton's metrics endpoint (dcam-serve --metrics-port; port 8002 of a pod).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@reports_errors
def status_command(metrics_url: str, as_json: bool) -> None:
    """Print the line's status per product: images, anomaly rate, median score, drift."""
    status = line_status(scrape(metrics_url))
    click.echo(json.dumps(status, indent=1) if as_json else format_status(status))
