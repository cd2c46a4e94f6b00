"""The pretraining stage's configuration: one frozen dataclass, mapped 1:1 onto
`dcam-teacher pretrain` flags. Torch-free, so the CLI reads its defaults without torch."""

from __future__ import annotations

from dataclasses import dataclass

from dcam.core.errors import ConfigError
from dcam.nets.choices import check_backbone

# Where the teacher's weights come from (sources.py), here so CLIs read the choices without torch.
# formula and fractal: the shipped license-clean teachers (shipped.py); formula is the stronger
# one (benchmarks/README.md), fractal its predecessor, kept so old runs reproduce. auto: ImageNet
# where torchvision has the weights cached or can download them, else formula (a first run).
TEACHER_SOURCES = ("auto", "imagenet", "formula", "fractal", "random")

# Pretraining image families (formulas.py). `--data` names one, several joined by `+` (the
# classes split evenly over them), or `mix` for all of them.
FAMILIES = ("fractal", "dead_leaves", "spectral")


def data_families(data: str) -> tuple[str, ...]:
    """The families `data` names: `dead_leaves`, `dead_leaves+spectral`, `mix` (all)."""
    families = FAMILIES if data == "mix" else tuple(data.split("+"))
    if any(f not in FAMILIES for f in families) or len(set(families)) != len(families):
        raise ConfigError(
            f"unknown data {data!r}: name one of {FAMILIES}, several joined by '+', or 'mix'"
        )
    return families


@dataclass(frozen=True)
class PretrainConfig:
    out: str
    data: str = "fractal"
    backbone: str = "resnet18"
    n_classes: int = 128
    instances_per_class: int | None = None  # None: render on the fly; else a fixed cached set
    image_size: int = 64
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    minutes: float | None = 30.0  # budgets: training stops at whichever is reached first
    max_images: int | None = None
    amp: bool = True  # FP16 autocast + GradScaler, on CUDA only
    workers: int | None = None  # render processes; None: none on CPU, up to 16 on CUDA
    force: bool = False  # replace a teacher already in `out`

    def __post_init__(self) -> None:
        check_backbone(self.backbone)
        data_families(self.data)
        if self.n_classes < 2 or self.batch_size < 2 or self.image_size < 32:
            raise ConfigError("need n_classes >= 2, batch_size >= 2 and image_size >= 32")
        if self.minutes is None and self.max_images is None:
            raise ConfigError("give a budget: minutes, max_images or both")
        if (self.minutes or 1) <= 0 or (self.max_images or 1) <= 0:
            raise ConfigError("minutes and max_images must be positive")
        if self.instances_per_class is not None and self.instances_per_class < 1:
            raise ConfigError("instances_per_class must be at least 1 (or None: on the fly)")


@dataclass(frozen=True)
class ProbeConfig:
    data: str
    teacher: str = "formula"  # as dcam-train: auto, imagenet, formula, fractal or random
    teacher_weights: str | None = None
    adapt_bn: bool = True  # AdaBN on the training good images first, as dcam-train does
    backbone: str = "resnet18"
    image_size: int = 128
    bank_size: int = 8192  # patches kept per product (random subset): enough, and fast
    seed: int = 0

    def __post_init__(self) -> None:
        check_backbone(self.backbone)
        if self.teacher not in TEACHER_SOURCES:
            raise ConfigError(f"unknown teacher {self.teacher!r}; choose one of {TEACHER_SOURCES}")
        if self.bank_size < 1 or self.image_size < 32 or self.image_size % 32:
            raise ConfigError("bank_size must be >= 1 and image_size a multiple of 32, >= 32")
