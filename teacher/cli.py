"""Command line: `dcam-teacher pretrain`, a teacher pretrained on formula-generated fractals.

Every option maps onto a `PretrainConfig` field and takes its default from there; only this
layer turns library errors into messages and exit codes.
"""

from __future__ import annotations

import click

from dcam.core.cli import default, reports_errors
from dcam.teacher.config import PretrainConfig
from dcam.training.config import BACKBONES


def _d(name: str):
    return default(PretrainConfig, name)


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
@click.option("--backbone", type=click.Choice(BACKBONES), default=_d("backbone"))
@click.option("--classes", "n_classes", type=int, default=_d("n_classes"), help="IFS classes.")
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
    """Pretrain the teacher backbone to classify formula-generated fractals (FractalDB)."""
    from dcam.teacher.pretrain import pretrain  # deferred: torch import is slow

    options["minutes"] = options["minutes"] or None
    result = pretrain(PretrainConfig(**options))
    click.echo(
        f"{result['images_seen']} images in {result['minutes']:.1f} min "
        f"({result['images_per_second']:.0f} images/s); held-out top-1 accuracy "
        f"{result['accuracy']:.3f} over {result['classes']} classes; "
        f"wrote {options['out']}/teacher.pt and teacher.json"
    )
