"""Command line: `dcam-client score --dir DIR`, `dcam-client status` (the line, from Triton's
metrics) and `dcam-client auroc` (for labelled folders).

`score` options map onto `ScoreConfig` (how to score) and `RunConfig` (what to score, where results
go; client/run.py runs it) and take their defaults from there; only this layer turns library
errors into messages and exit codes (through `reports_errors`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import click
import numpy as np

from dcam.client.results import is_true, latest_rows
from dcam.client.run import Outcome, RunConfig, score_folder
from dcam.client.score import ScoreConfig
from dcam.client.status import format_status, line_status, prometheus_status, read_pages
from dcam.client.transport import ClientTls
from dcam.client.triton import SHM_MODES
from dcam.core.cli import EXISTING_FILE, default, reports_errors
from dcam.core.metrics import auroc
from dcam.core.network import DEFAULT_METRICS_PORT


@click.group()
def client_group() -> None:
    """Score production-line images with a dcam model served by Triton."""


def _d(name: str):
    return default(ScoreConfig, name)


def _run(name: str):
    return default(RunConfig, name)


TLS_OPTIONS = ("tls_on", "tls_root_cert", "tls_cert", "tls_key", "tls_server_name")


def _tls(
    on: bool, root: str | None, cert: str | None, key: str | None, server_name: str | None
) -> ClientTls | None:
    if not (on or root or cert or key or server_name):
        return None
    files = (Path(p) if p else None for p in (root, cert, key))
    return ClientTls(*files, server_name=server_name)


def _configs(options: dict) -> tuple[ScoreConfig, RunConfig]:
    """The score options as the two configs: RunConfig's by field name, the five --tls* options
    as ScoreConfig's `tls`, the rest ScoreConfig's as they are."""
    tls = _tls(*(options.pop(k) for k in TLS_OPTIONS))
    run = RunConfig(**{f.name: options.pop(f.name) for f in dataclasses.fields(RunConfig)})
    return ScoreConfig(**options, tls=tls, keep_maps=run.heatmaps is not None), run


@client_group.command("score", context_settings={"show_default": True})
@click.option(
    "--dir",
    "root",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder of images to score.",
)
@click.option("--recursive", is_flag=True, help="Also score images in sub-folders.")
@click.option(
    "--glob", "pattern", default=_run("pattern"), help="Only paths (relative to --dir) matching."
)
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
    "resolve_every_s",
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
    default=_run("output"),
    type=click.Path(dir_okay=False),
    help="Results file, .jsonl or .csv, written as results arrive.",
)
@click.option(
    "--heatmaps",
    type=click.Path(file_okay=False),
    default=_run("heatmaps"),
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
@click.option(
    "--timeout", "timeout_s", type=float, default=_d("timeout_s"), help="Per-request timeout, s."
)
@click.option(
    "--retries", type=int, default=_d("retries"), help="Attempts per batch after the first."
)
@click.option(
    "--ready-timeout",
    "ready_timeout_s",
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
    "--tls-server-name",
    default=None,
    help="Name the server's certificate must carry (implies --tls). Default: the host of "
    "--url; for dns:///NAME:port, NAME for every address it resolves to.",
)
@click.option(
    "--api-key",
    envvar="DCAM_API_KEY",
    default=_d("api_key"),
    help="Key to the server's restricted APIs (dcam-serve --api-key); prefer DCAM_API_KEY.",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False),
    default=_run("summary_json"),
    help="Also write the closing summary, with per-product anomaly rates, as JSON.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --output.")
@click.option("--watch", is_flag=True, help="Keep scoring new files as they land (Ctrl-C ends).")
@click.option(
    "--settle",
    type=float,
    default=_run("settle"),
    help="With --watch: seconds a new file must stay unchanged before it is scored, where the "
    "OS reports no close after writing (network shares). A file that failed is scored again "
    "once it changes.",
)
@reports_errors
def score_command(**options) -> None:
    """Score every image under --dir; exit status 1 if any file failed.

    SIGINT or SIGTERM stops it: requests in flight finish, their results are written, the files
    left are counted (exit status 128 + the signal, e.g. 130, when any are), and --resume scores
    them. A second signal aborts at once (exit status 130).
    """
    cfg, run = _configs(options)
    _report(score_folder(cfg, run, note=lambda line: click.echo(line, err=True)), run)


def _report(outcome: Outcome, run: RunConfig) -> None:
    """The closing summary, the folders skipped, the failures (exit status 1 with any) and the
    files a stop left (exit status 128 + its signal)."""
    skipped = f"\n(skipped {outcome.skipped} already in {run.output})" if outcome.skipped else ""
    click.echo(outcome.tally.summary() + skipped)
    if outcome.folders:
        names = ", ".join(os.fsdecode(f) for f in outcome.folders[:5])
        names += ", ..." if len(outcome.folders) > 5 else ""
        click.echo(f"skipped {len(outcome.folders)} folders named like images (not files): {names}")
    if outcome.failures:
        for path, error in outcome.failures[:50]:
            click.echo(f"FAILED {path}: {error}", err=True)
        click.echo(f"{len(outcome.failures)} failed files in {run.output}", err=True)
    if outcome.left:
        name = signal.Signals(outcome.stopped_by).name
        click.echo(
            f"stopped by {name}: {outcome.left} files left unscored; "
            f"--resume --output {run.output} scores them",
            err=True,
        )
        raise SystemExit(128 + outcome.stopped_by)
    if outcome.failures:
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
    default=None,
    help="Triton's metrics endpoint (dcam-serve --metrics-port; port "
    f"{DEFAULT_METRICS_PORT} of a pod), or dns:///name:port for every pod behind a headless "
    "Service, read and merged. Default: "
    f"http://127.0.0.1:{DEFAULT_METRICS_PORT}/metrics.",
)
@click.option(
    "--prometheus-url",
    default=None,
    help="Read the figures from Prometheus instead (http://prometheus:9090), summed over "
    "every pod it scrapes.",
)
@click.option(
    "--namespace",
    default=None,
    help="With --prometheus-url: the line's namespace, needed when Prometheus watches several.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@reports_errors
def status_command(
    metrics_url: str | None, prometheus_url: str | None, namespace: str | None, as_json: bool
) -> None:
    """Print the line's status per product: images, anomaly rate, median score, drift; and how
    many pods the figures are from."""
    if metrics_url and prometheus_url:
        raise click.UsageError("give --metrics-url or --prometheus-url, not both")
    if namespace and not prometheus_url:
        raise click.UsageError("--namespace selects series in Prometheus: give --prometheus-url")
    if prometheus_url:
        status = prometheus_status(prometheus_url, namespace)
    else:
        url = metrics_url or f"http://127.0.0.1:{DEFAULT_METRICS_PORT}/metrics"
        status = line_status(*read_pages(url))
    click.echo(json.dumps(status, indent=1) if as_json else format_status(status))
