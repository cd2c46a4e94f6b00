"""Judge a teacher in minutes, before distilling: a patch nearest-neighbour probe on its frozen
features (`dcam-teacher probe`).

Per product, a memory bank of the training good images' patch features (layer2, and layer3
upsampled to layer2's grid, concatenated, as PatchCore does); a test image's score is its
patch farthest from the bank. No student, no training: what it measures is how well the
teacher's features alone separate this line's defects, the ceiling distillation works under.
Reads an MVTec-layout dataset; returns image AUROC per product and their mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcam.core.metrics import auroc
from dcam.datasets.layout import discover, load_images
from dcam.nets.features import Normalize, adapt_batchnorm
from dcam.teacher.config import ProbeConfig
from dcam.teacher.sources import load_teacher


@torch.no_grad()
def patch_features(net: torch.nn.Module, images: np.ndarray, batch: int = 16) -> torch.Tensor:
    """(N, P, C) features: layer2 and layer3 (upsampled to layer2's grid), concatenated."""
    normalize = Normalize()
    out = []
    for start in range(0, len(images), batch):
        _, l2, l3 = net(normalize(torch.from_numpy(images[start : start + batch])))
        l3 = F.interpolate(l3, size=l2.shape[-2:], mode="bilinear", align_corners=False)
        feats = torch.cat([l2, l3], dim=1)
        out.append(feats.flatten(2).transpose(1, 2))
    return torch.cat(out)


def farthest_patch(test: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """Per test image, the largest distance from any of its patches to its nearest bank patch."""
    scores = []
    for image in test:
        nearest = torch.cat([torch.cdist(p, bank).amin(1) for p in image.split(chunk)])
        scores.append(float(nearest.max()))
    return np.array(scores)


def probe(cfg: ProbeConfig) -> dict:
    """Image AUROC per product and mean, from the teacher's frozen features alone."""
    torch.manual_seed(cfg.seed)
    weights = Path(cfg.teacher_weights) if cfg.teacher_weights else None
    net = load_teacher(cfg.backbone, cfg.teacher, weights)
    splits = discover([Path(cfg.data)], seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_all = load_images(splits.train, cfg.image_size)
    if cfg.adapt_bn:
        adapt_batchnorm(net, train_all, 16, torch.device("cpu"))
    results: dict = {"per_category": {}}
    train_categories = np.array([s.category for s in splits.train])
    for category in sorted(set(train_categories)):
        train = train_all[train_categories == category]
        test = [s for s in splits.test if s.category == category]
        labels = np.array([s.is_anomalous for s in test])
        if not len(test) or labels.all() or not labels.any():
            continue
        bank = patch_features(net, train).flatten(0, 1)
        keep = rng.choice(len(bank), size=min(cfg.bank_size, len(bank)), replace=False)
        scores = farthest_patch(patch_features(net, load_images(test, cfg.image_size)), bank[keep])
        results["per_category"][category] = auroc(labels, scores)
    values = list(results["per_category"].values())
    results["mean_image_auroc"] = float(np.mean(values)) if values else None
    return results
