"""Command line: `dcam-train` (training stage), `dcam-data synth` (synthetic dataset) and
`dcam-teacher pretrain` (a teacher pretrained on formula-generated fractals).

Only this layer turns library errors into messages and exit codes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from dcam.training.anomaly_map import COMBINE_MODES
from dcam.training.attention import DCAM_VARIANTS
from dcam.training.errors import DcamError
from dcam.training.losses import LOSSES
from dcam.training.model import DCAM_MODES, TEACHER_SOURCES


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


@click.command(context_settings={"show_default": True})
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset root (MVTec layout or folders of good images); repeat to pool.",
)
@click.option(
    "--out",
    default="runs/dcam",
    type=click.Path(file_okay=False),
    help="Output folder for weights, manifest and report.",
)
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option("--backbone", type=click.Choice(["resnet18", "wide_resnet50_2"]), default="resnet18")
@click.option(
    "--teacher",
    type=click.Choice(TEACHER_SOURCES),
    default="imagenet",
    help="Teacher weights: torchvision ImageNet (cache or download), fractal (the shipped "
    "FractalDB-pretrained weights, see dcam-teacher), or random (tests only).",
)
@click.option(
    "--teacher-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local torchvision checkpoint for the teacher (overrides --teacher).",
)
@click.option(
    "--dcam",
    type=click.Choice(DCAM_VARIANTS),
    default="channel",
    help="DCAM attention on the student's levels; none = STFPM baseline.",
)
@click.option(
    "--dcam-mode",
    type=click.Choice(DCAM_MODES),
    default="mask",
    help="How attention enters the loss (see README).",
)
@click.option(
    "--losses", default="cosine,kl", help=f"Comma-separated losses from {', '.join(LOSSES)}."
)
@click.option("--temperature", type=float, default=1.0, help="Spatial KL softmax temperature.")
@click.option("--image-size", type=int, default=256)
@click.option("--epochs", type=int, default=20)
@click.option("--batch-size", type=int, default=8)
@click.option("--lr", type=float, default=0.4)
@click.option("--momentum", type=float, default=0.9)
@click.option("--weight-decay", type=float, default=1e-4)
@click.option("--seed", type=int, default=0)
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--val-fraction",
    type=float,
    default=0.1,
    help="Share of good training images held out per category.",
)
@click.option("--combine", type=click.Choice(COMBINE_MODES), default="sum")
@click.option("--sigma", type=float, default=4.0, help="Anomaly-map Gaussian sigma (0: off).")
@click.option("--threshold-quantile", type=float, default=0.99)
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--force", is_flag=True, help="Replace an earlier run in --out.")
def train_command(resume: bool, force: bool, **options) -> None:
    """Train one DCAM teacher-student model for all categories, then evaluate it."""
    from dcam.training.config import TrainConfig  # deferred: torch import is slow
    from dcam.training.train import train

    options["data"] = tuple(options["data"])
    options["categories"] = _split(options["categories"])
    options["losses"] = _split(options["losses"]) or ()
    try:
        cfg = TrainConfig(**options)
        manifest = train(cfg, resume=resume, force=force)
    except DcamError as exc:
        raise click.ClickException(str(exc)) from exc
    report = Path(cfg.out) / "report.md"
    if report.exists():
        click.echo(report.read_text())
    click.echo(f"best epoch {manifest['training']['best_epoch']}; outputs in {cfg.out}")


@click.group()
def data_group() -> None:
    """Datasets for dcam."""


@data_group.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option("--size", type=int, default=256, help="Image side in pixels.")
@click.option("--n-train", type=int, default=60, help="Good training images per category.")
@click.option("--n-test-good", type=int, default=10, help="Good test images per category.")
@click.option("--n-test-per-defect", type=int, default=4, help="Test images per defect kind.")
@click.option("--seed", type=int, default=0)
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
def synth_command(out: str, categories: str | None, force: bool, **options) -> None:
    """Generate a synthetic production-line dataset in MVTec AD layout."""
    from dcam.training.synthetic import generate_dataset

    root = Path(out)
    if root.exists() and any(root.iterdir()) and not force:
        raise click.ClickException(f"{root} is not empty; pass --force to write into it")
    start = time.perf_counter()
    try:
        summary = generate_dataset(root, categories=_split(categories), progress=True, **options)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    (root / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    n = sum(
        c["train"] + c["test_good"] + sum(c["test_defect"].values())
        for c in summary["categories"].values()
    )
    click.echo(
        f"wrote {n} images in {len(summary['categories'])} categories to {root} "
        f"({time.perf_counter() - start:.1f} s)"
    )


@click.group()
def teacher_group() -> None:
    """Teachers for dcam that need no ImageNet download."""


@teacher_group.command("pretrain", context_settings={"show_default": True})
@click.option(
    "--out",
    default="runs/teacher",
    type=click.Path(file_okay=False),
    help="Output folder for teacher.pt and teacher.json.",
)
@click.option("--backbone", type=click.Choice(["resnet18", "wide_resnet50_2"]), default="resnet18")
@click.option("--classes", "n_classes", type=int, default=128, help="Fractal (IFS) classes.")
@click.option(
    "--instances-per-class",
    type=int,
    default=None,
    help="Render a fixed cached set of this many images per class (default: fresh on the fly).",
)
@click.option("--image-size", type=int, default=64)
@click.option("--batch-size", type=int, default=64)
@click.option("--lr", type=float, default=0.1)
@click.option("--weight-decay", type=float, default=1e-4)
@click.option("--seed", type=int, default=0)
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--minutes", type=float, default=30.0, help="Time budget; 0: none.")
@click.option("--max-images", type=int, default=None, help="Image budget (default: none).")
@click.option("--amp/--no-amp", default=True, help="FP16 mixed precision on CUDA.")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Rendering processes (default: none on CPU, up to 16 on CUDA).",
)
@click.option("--force", is_flag=True, help="Replace an earlier teacher in --out.")
def pretrain_command(force: bool, **options) -> None:
    """Pretrain the teacher backbone to classify formula-generated fractals (FractalDB)."""
    from dcam.training.pretrain import PretrainConfig, pretrain  # deferred: torch is slow

    options["minutes"] = options["minutes"] or None
    if (Path(options["out"]) / "teacher.pt").exists() and not force:
        raise click.ClickException(f"{options['out']} already holds teacher.pt; pass --force")
    try:
        result = pretrain(PretrainConfig(**options))
    except DcamError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{result['images_seen']} images in {result['minutes']:.1f} min "
        f"({result['images_per_second']:.0f} images/s); held-out top-1 accuracy "
        f"{result['accuracy']:.3f} over {result['classes']} classes; "
        f"wrote {options['out']}/teacher.pt and teacher.json"
    )
