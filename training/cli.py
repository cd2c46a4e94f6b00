"""Command line: `dcam-train`, the training stage.

Every option maps onto a `TrainConfig` field and takes its default from there; only this layer
turns library errors into messages and exit codes (through `reports_errors`).
"""

from __future__ import annotations

from pathlib import Path

import click

from dcam.core.anomaly_map import COMBINE_MODES
from dcam.core.cli import default, reports_errors
from dcam.nets.choices import BACKBONES
from dcam.teacher.config import TEACHER_SOURCES
from dcam.training.config import (
    AUGMENTATIONS,
    CALIBRATION_METHODS,
    DCAM_MODES,
    DCAM_VARIANTS,
    FEATURE_NORMS,
    LOSSES,
    LR_SCHEDULES,
    TrainConfig,
)


def split_list(value: str | None) -> tuple[str, ...] | None:
    """'a, b,' -> ('a', 'b'); None or '' -> None."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def parse_weights(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """--level-weights '1, 0.5,2' -> (1.0, 0.5, 2.0); a word that is not a number is a usage
    error (click callback, so the option maps onto TrainConfig.level_weights directly)."""
    try:
        return tuple(float(v) for v in split_list(value) or ())
    except ValueError:
        raise click.BadParameter(f"not a list of numbers: {value!r}") from None


def _d(name: str):
    return default(TrainConfig, name)


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
    default=_d("out"),
    type=click.Path(file_okay=False),
    help="Output folder for weights, manifest and report.",
)
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option("--backbone", type=click.Choice(BACKBONES), default=_d("backbone"))
@click.option(
    "--teacher",
    type=click.Choice(TEACHER_SOURCES),
    default=_d("teacher"),
    help="Teacher weights: torchvision ImageNet (cache or download), formula (shipped, "
    "pretrained on rendered dead-leaves images, no download), fractal (its shipped "
    "predecessor, IFS fractals), auto (ImageNet where cached or downloadable within a few "
    "seconds, else formula; says which and why, and the manifest records it), or random "
    "(tests only).",
)
@click.option(
    "--teacher-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local torchvision checkpoint for the teacher (overrides --teacher).",
)
@click.option(
    "--adapt-teacher-bn/--no-adapt-teacher-bn",
    default=_d("adapt_teacher_bn"),
    help="Re-estimate the teacher's BatchNorm statistics on the training good images (AdaBN).",
)
@click.option(
    "--dcam",
    type=click.Choice(DCAM_VARIANTS),
    default=_d("dcam"),
    help="DCAM attention on the student's levels; none = STFPM baseline.",
)
@click.option(
    "--dcam-mode",
    type=click.Choice(DCAM_MODES),
    default=_d("dcam_mode"),
    help="How attention enters the loss (see README).",
)
@click.option(
    "--losses",
    default=",".join(_d("losses")),
    help=f"Comma-separated losses from {', '.join(LOSSES)}.",
)
@click.option("--temperature", type=float, default=_d("temperature"), help="Spatial KL T.")
@click.option("--image-size", type=int, default=_d("image_size"))
@click.option("--epochs", type=int, default=_d("epochs"))
@click.option("--batch-size", type=int, default=_d("batch_size"))
@click.option("--lr", type=float, default=_d("lr"))
@click.option(
    "--lr-schedule",
    type=click.Choice(LR_SCHEDULES),
    default=_d("lr_schedule"),
    help="constant (STFPM's), or cosine: decays to 0 over --epochs.",
)
@click.option(
    "--level-weights",
    default=",".join(str(w) for w in _d("level_weights")),
    callback=parse_weights,
    help="Comma-separated loss weights of layer1, layer2, layer3.",
)
@click.option(
    "--feature-norm",
    type=click.Choice(FEATURE_NORMS),
    default=_d("feature_norm"),
    help="channel: standardise both sides by the teacher's per-channel statistics on the "
    "training goods before the losses (training only).",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENTATIONS),
    default=_d("augment"),
    help="Augment the training goods: photometric (gain and offset, +-10%) or flip.",
)
@click.option("--momentum", type=float, default=_d("momentum"))
@click.option("--weight-decay", type=float, default=_d("weight_decay"))
@click.option("--seed", type=int, default=_d("seed"))
@click.option("--device", default=_d("device"), help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--val-fraction",
    type=float,
    default=_d("val_fraction"),
    help="Share of good training images held out per category.",
)
@click.option("--combine", type=click.Choice(COMBINE_MODES), default=_d("combine"))
@click.option(
    "--sigma", type=float, default=_d("sigma"), help="Anomaly-map Gaussian sigma (0: off)."
)
@click.option(
    "--min-val-per-category",
    type=int,
    default=_d("min_val_per_category"),
    help="Held-out good images per category at least (at most half of its images).",
)
@click.option(
    "--calibration",
    type=click.Choice(CALIBRATION_METHODS),
    default=_d("calibration"),
    help="Threshold rule: gumbel (extreme-value fit to held-out scores), quantile, or f1 "
    "(best F1 on synthetic anomalies).",
)
@click.option(
    "--target-fpr",
    type=float,
    default=_d("target_fpr"),
    help="False positive rate on good parts the decision threshold is set for.",
)
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--force", is_flag=True, help="Replace an earlier run in --out.")
@reports_errors
def train_command(resume: bool, force: bool, **options) -> None:
    """Train one DCAM teacher-student model for all categories, then evaluate it."""
    from dcam.training.train import train  # deferred: torch import is slow

    options["data"] = tuple(options["data"])
    options["categories"] = split_list(options["categories"])
    options["losses"] = split_list(options["losses"]) or ()
    cfg = TrainConfig(**options)
    manifest = train(cfg, resume=resume, force=force)
    report = Path(cfg.out) / "report.md"
    if report.exists():
        click.echo(report.read_text())
    click.echo(f"best epoch {manifest['training']['best_epoch']}; outputs in {cfg.out}")
