"""Command line: `dcam-review RESULTS... --heatmaps DIR --repository REPO` opens the station;
`apply`, `rollback`, `history` and `export` do from a shell what the pages do.

`dcam-review RESULTS` is short for `dcam-review open RESULTS`. Options map onto `ReviewConfig`
and take its defaults. Only this layer turns library errors into messages and exit codes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dcam.core.cli import default, reports_errors
from dcam.core.errors import ConfigError
from dcam.core.network import address_url
from dcam.review.config import TOKEN_ENV, ReviewConfig
from dcam.review.station import Station
from dcam.review.versions import Repository

RESULTS = click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))


class DefaultOpen(click.Group):
    """A group whose first argument, when it names no command, is a results file to open."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["open", *args]
        return super().parse_args(ctx, args)


_SERVER_OPTIONS = [
    click.option(
        "--server",
        default=None,
        help="gRPC address of the Triton serving the repository: an apply asks it to "
        "load the new version and waits until it serves it.",
    ),
    click.option(
        "--api-key",
        envvar="DCAM_API_KEY",
        default=None,
        help="Key to that server's control APIs, where it has one (DCAM_API_KEY).",
    ),
]


def _station_options(command):
    options = [
        click.option(
            "--heatmaps",
            multiple=True,
            type=click.Path(file_okay=False),
            help="Heatmap folder of `dcam-client score --heatmaps` (repeat per line PC).",
        ),
        click.option(
            "--repository",
            type=click.Path(file_okay=False),
            default=None,
            help="The model repository that scored the results: thresholds, versions, apply.",
        ),
        click.option(
            "--labels",
            type=click.Path(dir_okay=False),
            default=None,
            help="The SQLite label file [default: <first results>.labels.sqlite].",
        ),
        click.option(
            "--false-call-rate",
            type=float,
            default=default(ReviewConfig, "false_call_rate"),
            help="The stated false-call rate: fits aim at it; applying a threshold "
            "the labels show above it asks for confirmation.",
        ),
        click.option(
            "--confidence",
            type=float,
            default=default(ReviewConfig, "confidence"),
            help="Confidence of the bounds on the rates (one-sided Clopper-Pearson).",
        ),
        click.option(
            "--presume-passed-good/--labelled-only",
            default=True,
            help="Count unlabelled parts the line passed as good in fits.",
        ),
        *_SERVER_OPTIONS,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _config(
    results,
    heatmaps,
    repository,
    labels,
    false_call_rate,
    confidence,
    presume_passed_good,
    server,
    api_key,
    **listen,
) -> ReviewConfig:
    return ReviewConfig(
        results=tuple(Path(r) for r in results),
        heatmaps=tuple(Path(h) for h in heatmaps),
        repository=None if repository is None else Path(repository),
        labels=None if labels is None else Path(labels),
        false_call_rate=false_call_rate,
        confidence=confidence,
        presume_passed_good=presume_passed_good,
        server=server,
        api_key=api_key,
        **listen,
    )


@click.group(cls=DefaultOpen, context_settings={"show_default": True})
def review_group() -> None:
    """The review station: judge flagged parts in a browser, fit thresholds from the labels,
    apply them as a new calibration version the server takes without a restart."""


@review_group.command("open")
@RESULTS
@_station_options
@click.option(
    "--host",
    default=default(ReviewConfig, "host"),
    help="Address to listen on; any but loopback needs a token.",
)
@click.option("--port", type=int, default=default(ReviewConfig, "port"))
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    help=f"Token every request must carry (prefer ${TOKEN_ENV}); printed in the URL.",
)
@click.option(
    "--borderline",
    type=int,
    default=default(ReviewConfig, "borderline"),
    help="Passed parts nearest the threshold shown per product.",
)
@reports_errors
def open_command(results, host, port, token, borderline, **options) -> None:
    """Serve the station for RESULTS (JSONL/CSV of dcam-client score; several merge by path)."""
    import uvicorn

    from dcam.review.app import create_app

    config = _config(results, host=host, port=port, token=token, borderline=borderline, **options)
    station = Station(config)
    url = f"http://{address_url(host, port)}/" + (f"?token={token}" if token else "")
    click.echo(f"review station: {url}")
    click.echo(f"labels: {config.labels_path} (written as they are given)")
    uvicorn.run(create_app(station), host=host, port=port, log_level="warning")


@review_group.command("apply")
@RESULTS
@_station_options
@click.option("--operator", required=True, help="Who applies it (recorded in the version).")
@click.option(
    "--detection-rate",
    type=float,
    default=None,
    help="Fit for this detection rate instead of the false-call rate.",
)
@click.option(
    "--product",
    "products",
    multiple=True,
    help="Products to re-fit [default: every product with a labelled good part (a labelled "
    "defect for --detection-rate)].",
)
@click.option("--yes", is_flag=True, help="Apply even where the labels do not back it.")
@reports_errors
def apply_command(results, operator, detection_rate, products, yes, **options) -> None:
    """Fit each product's threshold from the labels and write them as one new version."""
    station = Station(_config(results, **options))
    target = "detection_rate" if detection_rate is not None else "false_call_rate"
    rate = detection_rate if detection_rate is not None else station.config.false_call_rate
    needed = "good" if target == "false_call_rate" else "defect"
    counts = station.store.counts()
    labelled = [p for p in station.run.products() if counts.get(p, {}).get(needed)]
    chosen = list(products) or station.run.products()  # unlabelled ones keep their thresholds
    stated = rate if target == "false_call_rate" else None
    thresholds, concerns = {}, []
    for product in chosen:
        name = product or "(no product: global)"
        if product not in labelled:
            click.echo(f"{name}: no {needed} part is labelled; its threshold stays")
            continue
        fitted = station.fit(product, target, rate)
        click.echo(f"{name}: {fitted.note}")
        if fitted.threshold is None:
            continue
        thresholds[product] = fitted.threshold
        concerns += [
            f"{name}: {c}" for c in station.apply_concerns(product, fitted.threshold, stated)
        ]
    if not thresholds:
        raise ConfigError("no product has labels to fit a threshold from")
    if concerns:
        click.echo("The labels do not back this:\n  " + "\n  ".join(concerns), err=True)
        if not yes and not (sys.stdin.isatty() and click.confirm("Apply anyway?")):
            raise ConfigError("not applied (--yes applies anyway)")
    record = station.apply(
        thresholds, operator, {"target": target, "rate": rate, "concerns": concerns}
    )
    click.echo(f"calibration version {record.version} written to {station.repository.model_dir}")
    _take_up(station.repository, record.version, station.config.server, station.config.api_key)


def _take_up(repository: Repository, version: int, server: str | None, api_key: str | None):
    if server is None:
        click.echo("a polling server serves it at its next scan (--server waits for that)")
        return
    from dcam.review.serving import take_up

    how = take_up(server, repository.model, version, api_key=api_key)
    click.echo(f"{server} serves version {version}: {how}")


@review_group.command("rollback")
@click.argument("repository", type=click.Path(file_okay=False, exists=True))
@click.option("--operator", required=True, help="Who rolls back (recorded).")
@_SERVER_OPTIONS[0]
@_SERVER_OPTIONS[1]
@reports_errors
def rollback_command(repository, operator, server, api_key) -> None:
    """Undo REPOSITORY's latest calibration: a new version with the calibration before it."""
    repo = Repository(Path(repository))
    record = repo.rollback(operator)
    click.echo(
        f"version {record.version} written: the calibration of version "
        f"{record.source['restores']}, undoing version {record.source['rollback_of']}; served "
        "once the server rescans the repository"
    )
    _take_up(repo, record.version, server, api_key)


@review_group.command("history")
@click.argument("repository", type=click.Path(file_okay=False, exists=True))
@reports_errors
def history_command(repository) -> None:
    """Every apply and rollback of REPOSITORY, as JSON lines, oldest first."""
    repo = Repository(Path(repository))
    for entry in repo.history():
        click.echo(json.dumps(entry, sort_keys=True))
    click.echo(f"serving: {repo.calibration_name()}", err=True)


@review_group.command("export")
@RESULTS
@click.option("--labels", type=click.Path(dir_okay=False), default=None)
@click.option("--output", "-o", type=click.File("w"), default="-", help="CSV file [stdout].")
@reports_errors
def export_command(results, labels, output) -> None:
    """The labels of RESULTS as CSV: path, product, label, operator, labelled_at."""
    from dcam.review.store import LabelStore

    config = ReviewConfig(
        results=tuple(Path(r) for r in results), labels=None if labels is None else Path(labels)
    )
    if not config.labels_path.is_file():
        raise ConfigError(f"{config.labels_path}: no labels yet")
    count = LabelStore(config.labels_path).export_csv(output)
    click.echo(f"{count} labels", err=True)
