"""Formula-generated pretraining data: one interface over every image family.

A class is `(family, parameters)`; `render_batch` draws fresh instances of any classes, grouping
the batch by family. `mix` splits the classes evenly over all families, as the "Multi-Formula"
set of Ugwu, Casarin and Lanz (2024, arXiv 2405.06980) mixes formulae; `a+b` mixes the named
families only. A pure `fractal` set renders exactly as before this module existed, so the
shipped fractal teacher stays reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from dcam.teacher import fractal, procedural
from dcam.teacher.config import FAMILIES, data_families

_RENDER: dict[str, Callable] = {
    "dead_leaves": procedural.render_dead_leaves,
    "spectral": procedural.render_spectral,
}
_SAMPLE: dict[str, Callable] = {
    "dead_leaves": procedural.dead_leaves_class,
    "spectral": procedural.spectral_class,
}

Classes = list[tuple[str, object]]


def make_classes(source: str, n_classes: int, seed: int) -> Classes:
    """`n_classes` classes of the families `source` names, split evenly over them."""
    families = data_families(source)
    counts = [len(part) for part in np.array_split(np.arange(n_classes), len(families))]
    classes: Classes = []
    for family, count in zip(families, counts, strict=True):
        if family == "fractal":
            classes += [("fractal", s) for s in fractal.make_classes(count, seed)]
        else:
            rng = np.random.default_rng([seed, 0xC1A55, FAMILIES.index(family)])
            classes += [(family, _SAMPLE[family](rng)) for _ in range(count)]
    return classes


def render_batch(
    classes: Classes, class_ids: np.ndarray, rng: np.random.Generator, size: int
) -> np.ndarray:
    """UINT8 (B, size, size, 3) fresh instances of `classes[class_ids]`, rendered per family."""
    class_ids = np.asarray(class_ids)
    images = np.empty((len(class_ids), size, size, 3), dtype=np.uint8)
    kinds = np.array([classes[int(c)][0] for c in class_ids])
    for family in FAMILIES:
        rows = np.flatnonzero(kinds == family)
        if not len(rows):
            continue
        params = [classes[int(c)][1] for c in class_ids[rows]]
        if family == "fractal":
            images[rows] = fractal.render_batch(params, np.arange(len(rows)), rng, size)
        else:
            images[rows] = _RENDER[family](params, rng, size)
    return images


def render_set(
    classes: Classes, per_class: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, class-balanced set of instances (the cached training set, the held-out set)."""
    rng = np.random.default_rng([seed, 0x5E7])
    labels = np.repeat(np.arange(len(classes)), per_class)
    chunks = [
        render_batch(classes, c, rng, size) for c in np.array_split(labels, -(-len(labels) // 256))
    ]
    return np.concatenate(chunks), labels


class FormulaDataset(torch.utils.data.IterableDataset):
    """Endless (uint8 NHWC batch, labels) pairs rendered on the fly; one stream per worker."""

    def __init__(self, classes: Classes, batch_size: int, size: int, seed: int) -> None:
        super().__init__()
        self.classes, self.batch_size, self.size, self.seed = classes, batch_size, size, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0xDA7A, info.id if info else 0])
        while True:
            labels = rng.integers(0, len(self.classes), self.batch_size)
            images = render_batch(self.classes, labels, rng, self.size)
            yield torch.from_numpy(images), torch.from_numpy(labels)
