"""Pretrain a teacher backbone to classify formula-generated images (FractalDB and procedural
textures, formulas.py).

Reads nothing; writes `teacher.pt` (stem + layers 1-3 only, FP16, torchvision key names) and
`teacher.json` (classes, images seen, resolution, accuracy, seed, time, device) to the output
folder. Rendering lives in formulas.py; this is the classifier and its training loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dcam.core.errors import DcamError, OutputExistsError
from dcam.core.files import write_atomic, write_json_atomic
from dcam.nets.device import resolve_device
from dcam.nets.features import FeatureExtractor, Normalize
from dcam.teacher.config import PretrainConfig
from dcam.teacher.formulas import Classes, FormulaDataset, make_classes, render_set


class FractalClassifier(nn.Module):
    """Teacher backbone (stem + layers 1-3) + average pool + linear head: no layer4 to waste on."""

    def __init__(self, backbone: str, n_classes: int) -> None:
        super().__init__()
        self.normalize = Normalize()  # the same preprocessing the teacher gets when distilling
        self.features = FeatureExtractor(backbone)
        self.head = nn.Linear(self.features.channels[-1], n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(images))[-1].mean(dim=(2, 3)))


def _batches(cfg: PretrainConfig, classes: Classes, workers: int, pin: bool) -> Iterator:
    if cfg.instances_per_class is None:
        dataset = FormulaDataset(classes, cfg.batch_size, cfg.image_size, cfg.seed)
        yield from torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, pin_memory=pin
        )
        return
    images, labels = render_set(classes, cfg.instances_per_class, cfg.image_size, cfg.seed)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(cfg.seed)
    while True:
        for idx in torch.randperm(len(labels), generator=gen).split(cfg.batch_size):
            if len(idx) == cfg.batch_size:  # BatchNorm and a steady lr schedule: full batches
                yield images[idx], labels[idx]


def _accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, device, amp) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        for start in range(0, len(labels), 256):
            x = torch.from_numpy(images[start : start + 256]).to(device)
            pred = model(x).argmax(1).cpu().numpy()
            correct += int((pred == labels[start : start + 256]).sum())
    return correct / len(labels)


def _log(window: torch.Tensor, count: int, history: list, seen: int, lr: float, bar: tqdm) -> None:
    """Average the window (loss sum, correct) into the history; the only GPU sync in the loop."""
    total, correct = window.tolist()
    if not math.isfinite(total):
        raise DcamError(f"loss became {total / count} after {seen} images; lower --lr")
    history.append({"images": seen, "loss": total / count, "accuracy": correct / count, "lr": lr})
    bar.set_postfix(loss=f"{total / count:.3f}", acc=f"{correct / count:.3f}", lr=f"{lr:.3g}")
    window.zero_()


def pretrain(cfg: PretrainConfig) -> dict:
    """Train the classifier within the budget, save the teacher weights (FP16) and teacher.json."""
    if (Path(cfg.out) / "teacher.pt").exists() and not cfg.force:
        raise OutputExistsError(f"{cfg.out} already holds teacher.pt; pass --force to replace it")
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    amp = cfg.amp and cuda
    workers = (
        cfg.workers
        if cfg.workers is not None
        else (min(16, (os.cpu_count() or 2) - 1) if cuda else 0)
    )
    torch.manual_seed(cfg.seed)
    classes = make_classes(cfg.data, cfg.n_classes, cfg.seed)
    model = FractalClassifier(cfg.backbone, cfg.n_classes).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    steps_total = -(-cfg.max_images // cfg.batch_size) if cfg.max_images else None
    log_every = max(1, min(50, steps_total // 20)) if steps_total else 50
    history: list[dict] = []
    seen, step, count, window = 0, 0, 0, torch.zeros(2, device=device)  # loss sum, correct
    start = time.perf_counter()
    bar = tqdm(total=cfg.max_images, unit="img", desc=f"{cfg.data} pretraining", dynamic_ncols=True)
    model.train()
    batches = _batches(cfg, classes, workers, cuda)
    for images, labels in batches:
        progress = max(
            (time.perf_counter() - start) / (60 * cfg.minutes) if cfg.minutes else 0.0,
            seen / cfg.max_images if cfg.max_images else 0.0,
        )
        if progress >= 1.0:
            break
        lr = cfg.lr * min(1.0, progress / 0.02 + 0.05) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = len(labels)
        window += torch.stack([loss.detach() * n, (logits.argmax(1) == labels).sum().float()])
        seen, step, count = seen + n, step + 1, count + n
        bar.update(n)
        if step % log_every == 0:
            _log(window, count, history, seen, lr, bar)
            count = 0
    batches.close()  # stops the render workers
    if count:
        _log(window, count, history, seen, lr, bar)
    bar.close()
    if seen == 0:
        raise DcamError("the budget ended before the first batch")
    seconds = time.perf_counter() - start
    eval_images, eval_labels = render_set(classes, 10, cfg.image_size, cfg.seed + 1_000_003)
    accuracy = _accuracy(model, eval_images, eval_labels, device, amp)
    info = {
        "backbone": cfg.backbone,
        "data": cfg.data,
        "classes": cfg.n_classes,
        "images_seen": seen,
        "resolution": cfg.image_size,
        "accuracy": accuracy,
        "seed": cfg.seed,
        "minutes": round(seconds / 60, 3),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "config": dataclasses.asdict(cfg),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to("cpu", torch.float16) if v.is_floating_point() else v.cpu()).contiguous()
        for k, v in model.features.state_dict().items()
    }
    write_atomic(out / "teacher.pt", lambda fh: torch.save(state, fh))
    write_json_atomic(out / "teacher.json", info)
    return {**info, "history": history, "images_per_second": seen / seconds}
