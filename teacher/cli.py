"""Command line: `dcam-teacher pretrain` (a teacher pretrained on formula-generated images) and
`dcam-teacher probe` (judge a teacher before distilling).

Every option maps onto a `PretrainConfig` field and takes its default from there; only this
layer turns library errors into messages and exit codes.
"""

from __future__ import annotations

from pathlib import Path

import click

from dcam.core.cli import default, reports_errors
from dcam.nets.choices import BACKBONES
from dcam.teacher.config import FAMILIES, TEACHER_SOURCES, PretrainConfig, ProbeConfig


def _d(name: str):
    return default(PretrainConfig, name)


@click.group()
def teacher_group() -> None:
    """Teachers for dcam that need no ImageNet download."""


def _p(name: str):
    return default(ProbeConfig, name)


@teacher_group.command("probe", context_settings={"show_default": True})
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Dataset root in MVTec layout (train/good and a labelled test split per product).",
)
@click.option("--teacher", type=click.Choice(TEACHER_SOURCES), default=_p("teacher"))
@click.option("--teacher-weights", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--adapt-bn/--no-adapt-bn",
    default=_p("adapt_bn"),
    help="Re-estimate the teacher's BatchNorm statistics on the training images first.",
)
@click.option("--backbone", type=click.Choice(BACKBONES), default=_p("backbone"))
@click.option("--image-size", type=int, default=_p("image_size"))
@click.option("--bank-size", type=int, default=_p("bank_size"), help="Patches kept per product.")
@click.option("--seed", type=int, default=_p("seed"))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write JSON here.")
@reports_errors
def probe_command(out: str | None, **options) -> None:
    """Image AUROC of a patch nearest-neighbour probe on the teacher's frozen features."""
    from dcam.core.files import write_json_atomic
    from dcam.teacher.probe import probe  # deferred: torch import is slow

    result = probe(ProbeConfig(**options))
    for category, value in result["per_category"].items():
        click.echo(f"{category}: image AUROC {100 * value:.1f}")
    click.echo(f"mean image AUROC {100 * result['mean_image_auroc']:.1f}")
    if out:
        write_json_atomic(Path(out), {"config": options, **result})


@teacher_group.command("pretrain", context_settings={"show_default": True})
@click.option(
    "--out",
    default="runs/teacher",
    type=click.Path(file_okay=False),
    help="Output folder for teacher.pt and teacher.json.",
)
@click.option(
    "--data",
    default=_d("data"),
    help=f"Image family, one of {', '.join(FAMILIES)}; several joined by '+' "
    "(classes split evenly), or mix (all).",
)
@click.option("--backbone", type=click.Choice(BACKBONES), default=_d("backbone"))
@click.option("--classes", "n_classes", type=int, default=_d("n_classes"), help="Classes.")
@click.option(
    "--instances-per-class",
    type=int,
    default=_d("instances_per_class"),
    help="Render a fixed cached set of this many images per class (default: fresh on the fly).",
)
@click.option("--image-size", type=int, default=_d("image_size"))
@click.option("--batch-size", type=int, default=_d("batch_size"))
@click.option("--lr", type=float, default=_d("lr"))
@click.option("--weight-decay", type=float, default=_d("weight_decay"))
@click.option("--seed", type=int, default=_d("seed"))
@click.option("--device", default=_d("device"), help="auto, cpu, cuda or cuda:N.")
@click.option("--minutes", type=float, default=_d("minutes"), help="Time budget; 0: none.")
@click.option("--max-images", type=int, default=_d("max_images"), help="Image budget.")
@click.option("--amp/--no-amp", default=_d("amp"), help="FP16 mixed precision on CUDA.")
@click.option(
    "--workers",
    type=int,
    default=_d("workers"),
    help="Rendering processes (default: none on CPU, up to 16 on CUDA).",
)
@click.option("--force", is_flag=True, help="Replace an earlier teacher in --out.")
@reports_errors
def pretrain_command(**options) -> None:
    """Pretrain the teacher backbone to classify formula-generated images (no photograph)."""
    from dcam.teacher.pretrain import pretrain  # deferred: torch import is slow

    options["minutes"] = options["minutes"] or None
    result = pretrain(PretrainConfig(**options))
    click.echo(
        f"{result['images_seen']} images in {result['minutes']:.1f} min "
        f"({result['images_per_second']:.0f} images/s); held-out top-1 accuracy "
        f"{result['accuracy']:.3f} over {result['classes']} classes; "
        f"wrote {options['out']}/teacher.pt and teacher.json"
    )
