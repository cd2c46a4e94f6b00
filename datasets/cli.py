"""Command line: `dcam-data synth`, a synthetic production-line dataset in MVTec AD layout.

Only this layer turns library errors into messages and exit codes.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from dcam.core.cli import default, reports_errors
from dcam.datasets.synthetic import generate_dataset


def _d(name: str):
    return default(generate_dataset, name)


@click.group()
def data_group() -> None:
    """Datasets for dcam."""


@data_group.command("synth", context_settings={"show_default": True})
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option("--size", type=int, default=_d("size"), help="Image side in pixels.")
@click.option("--n-train", type=int, default=_d("n_train"), help="Good training images per class.")
@click.option(
    "--n-test-good", type=int, default=_d("n_test_good"), help="Good test images per class."
)
@click.option(
    "--n-test-per-defect", type=int, default=_d("n_test_per_defect"), help="Images per defect kind."
)
@click.option("--seed", type=int, default=_d("seed"))
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
@reports_errors
def synth_command(out: str, categories: str | None, **options) -> None:
    """Generate a synthetic production-line dataset in MVTec AD layout."""
    start = time.perf_counter()
    names = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    summary = generate_dataset(Path(out), categories=names, progress=True, **options)
    n = sum(
        c["train"] + c["test_good"] + sum(c["test_defect"].values())
        for c in summary["categories"].values()
    )
    click.echo(
        f"wrote {n} images in {len(summary['categories'])} categories to {out} "
        f"({time.perf_counter() - start:.1f} s)"
    )
