"""Train one student for many classes, pick the best epoch on held-out good images, evaluate.

Reads image folders (see data.py); writes to the output folder `teacher.pt`, `student.pt` (plain
state dicts, the student without DCAM weights), `manifest.json`, `config.json`, `report.json`,
`report.md`, and `checkpoint.pt` (every epoch, for `--resume`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dcam.core.anomaly_map import image_scores
from dcam.core.errors import ConfigError, DcamError, OutputExistsError
from dcam.core.files import write_atomic, write_json_atomic
from dcam.datasets.anomalies import cut_paste
from dcam.datasets.layout import Splits, load_images, load_masks
from dcam.nets.device import resolve_device
from dcam.teacher.shipped import SHIPPED_TEACHERS, shipped_weights_path
from dcam.teacher.sources import TeacherChoice, choose_source
from dcam.training.calibration import calibrate, detection_estimate, threshold_note
from dcam.training.config import TrainConfig
from dcam.training.evaluate import evaluate, markdown_table, predict_maps
from dcam.training.levers import (
    augment,
    augment_generator,
    channel_statistics,
    learning_rate,
    standardise,
)
from dcam.training.losses import distillation_loss
from dcam.training.manifest import build_manifest
from dcam.training.model import Normalize, Student, adapt_batchnorm, load_teacher

OUTPUT_FILES = ("teacher.pt", "student.pt", "manifest.json", "checkpoint.pt", "report.json")
_RESUMABLE_CHANGES = {"epochs", "device", "out"}


def prepare_output(out: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite an earlier run unless told to resume it or to replace it."""
    existing = [f for f in OUTPUT_FILES if (out / f).exists()]
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise DcamError(f"--resume: {out / 'checkpoint.pt'} does not exist")
    elif existing and not force:
        raise OutputExistsError(
            f"{out} already holds a run ({', '.join(existing)}); "
            "pass --resume to continue it or --force to replace it"
        )
    elif existing:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise DcamError(f"{out} is not writable")


def save_atomic(obj: dict, path: Path) -> None:
    write_atomic(path, lambda fh: torch.save(obj, fh))


def batch_loss(
    teacher, student, x: torch.Tensor, cfg: TrainConfig, stats: list | None = None
) -> torch.Tensor:
    """The distillation loss of one batch; `stats`: feature_norm's per-channel statistics."""
    with torch.no_grad():
        t_feats = teacher(x)
    s_feats = student(x)
    if stats is not None:
        t_feats, s_feats = standardise(t_feats, stats), standardise(s_feats, stats)
    pairs = student.loss_pairs(t_feats, s_feats)
    return sum(
        distillation_loss(t, s, cfg.losses, cfg.temperature, cfg.level_weights) for t, s in pairs
    )


def run_epoch(
    teacher,
    student,
    images: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    optimizer=None,
    scaler=None,
    stats: list | None = None,
) -> float:
    """One pass over `images`; trains when an optimizer is given, else returns the val loss."""
    training = optimizer is not None
    student.train(training)
    normalize = Normalize().to(device)
    order = (
        torch.randperm(
            len(images), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        )
        if training
        else torch.arange(len(images))
    )
    batches = order.split(cfg.batch_size)
    generator = augment_generator(cfg, epoch)
    total, seen = 0.0, 0
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{cfg.epochs}" if training else "validation",
        leave=False,
        dynamic_ncols=True,
    )
    for idx in bar:
        x = normalize(torch.from_numpy(images[idx.numpy()]).to(device))
        if training and cfg.augment != "none":
            x = augment(x, cfg.augment, generator)
        with (
            torch.set_grad_enabled(training),
            torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"),
        ):
            loss = batch_loss(teacher, student, x, cfg, stats)
        if training:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if not torch.isfinite(loss):
            raise DcamError(f"loss became {loss.item()} in epoch {epoch + 1}; lower --lr")
        total += loss.item() * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    return total / seen


def teacher_info(cfg: TrainConfig, n_train: int, choice: TeacherChoice | None = None) -> dict:
    """Which teacher the run used and how, for the manifest (never silently another one).

    `choice`: what `--teacher auto` resolved to, and why; None for an explicit source.
    """
    info = _teacher_source(cfg, choice or TeacherChoice(cfg.teacher))
    info["batchnorm"] = (
        f"re-estimated on the {n_train} training good images (AdaBN)"
        if cfg.adapt_teacher_bn
        else "as pretrained"
    )
    return info


def _teacher_source(cfg: TrainConfig, choice: TeacherChoice) -> dict:
    if cfg.teacher_weights:
        return {"source": "file", "path": str(cfg.teacher_weights)}
    info: dict = {"source": choice.source}
    if choice.reason:
        info.update(requested=cfg.teacher, reason=choice.reason)
    if choice.source == "random":
        info["warning"] = "random teacher: for tests only, understates every method"
    if choice.source in SHIPPED_TEACHERS:
        weights = shipped_weights_path(choice.source, cfg.backbone)
        sidecar = weights.with_suffix(".json")
        info["weights"] = weights.name
        if sidecar.is_file():
            info["pretraining"] = json.loads(sidecar.read_text())
    return info


def _teacher_choice(cfg: TrainConfig, resumed: Path | None) -> TeacherChoice:
    """The teacher's source: `auto` resolved now or, on --resume, as the interrupted run did
    (going online in between must not swap the teacher under a half-trained student)."""
    if cfg.teacher_weights:
        return TeacherChoice("file")
    checkpoint = resumed / "checkpoint.pt" if resumed is not None else None
    if cfg.teacher == "auto" and checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True).get("teacher")
        if saved:
            return TeacherChoice(**saved)
    return choose_source(cfg.backbone, cfg.teacher)


def _resume_state(out: Path, cfg: TrainConfig) -> dict:
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    saved = state["config"]
    changed = {
        k
        for k, v in cfg.to_dict().items()
        if k not in _RESUMABLE_CHANGES and TrainConfig.from_dict(saved).to_dict()[k] != v
    }
    if changed:
        raise ConfigError(f"--resume: settings differ from the interrupted run: {sorted(changed)}")
    if cfg.lr_schedule == "cosine" and saved["epochs"] != cfg.epochs:
        raise ConfigError(
            "--resume: --epochs cannot change under --lr-schedule cosine (the decay is laid out "
            f"over the run's {saved['epochs']} epochs)"
        )
    return state


def train(cfg: TrainConfig, resume: bool = False, force: bool = False) -> dict:
    """Run the whole training stage and return the manifest it wrote."""
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    # The teacher first: an unusable one (offline ImageNet, missing file) must fail before an
    # earlier run is replaced and before minutes of data loading.
    weights = Path(cfg.teacher_weights) if cfg.teacher_weights else None
    choice = _teacher_choice(cfg, out if resume else None)
    teacher = load_teacher(cfg.backbone, choice.source, weights).to(device)
    prepare_output(out, resume, force)
    splits = cfg.splits()
    train_images = load_images(splits.train, cfg.image_size, "loading train")
    val_images = load_images(splits.val, cfg.image_size, "loading held-out")
    if cfg.adapt_teacher_bn:  # deterministic, so a resumed run re-adapts to the same statistics
        adapt_batchnorm(teacher, train_images, cfg.batch_size, device)
    stats = (
        channel_statistics(teacher, train_images, cfg.batch_size, device)
        if cfg.feature_norm == "channel"
        else None
    )
    student = Student(cfg.backbone, teacher.channels, cfg.dcam, cfg.dcam_mode).to(device)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    state = {
        "epoch": 0,
        "best_val": float("inf"),
        "best_epoch": -1,
        "history": [],
        "best_student": None,
        "seconds": 0.0,
        "teacher": choice._asdict(),
    }
    if resume:
        state = _resume_state(out, cfg)
        state.setdefault("teacher", choice._asdict())  # checkpoints from before `auto`
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    write_json_atomic(out / "config.json", cfg.to_dict())
    for epoch in range(state["epoch"], cfg.epochs):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        train_loss = run_epoch(
            teacher, student, train_images, cfg, device, epoch, optimizer, scaler, stats
        )
        val_loss = run_epoch(teacher, student, val_images, cfg, device, epoch, stats=stats)
        state["seconds"] += time.perf_counter() - start
        state["history"].append(
            {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss}
        )
        if val_loss < state["best_val"]:
            state.update(
                best_val=val_loss,
                best_epoch=epoch + 1,
                best_student={k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
            )
        state.update(
            epoch=epoch + 1,
            config=cfg.to_dict(),
            student=student.state_dict(),
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
        )
        save_atomic(state, out / "checkpoint.pt")
        tqdm.write(
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f}  "
            f"held-out loss {val_loss:.4f}  ({time.perf_counter() - start:.1f} s)"
        )
    student.load_state_dict(state["best_student"])
    return finish(cfg, out, teacher, student, splits, val_images, device, state)


def finish(
    cfg: TrainConfig,
    out: Path,
    teacher,
    student,
    splits: Splits,
    val_images: np.ndarray,
    device: torch.device,
    state: dict,
) -> dict:
    """Calibrate on held-out good images, evaluate on the test split, write every output."""
    maps_kw = {"combine": cfg.combine, "sigma": cfg.sigma, "device": str(device)}
    val_scores = image_scores(predict_maps(teacher, student, val_images, **maps_kw))
    cats = [s.category for s in splits.val]
    synthetic = cut_paste(val_images, cats, cfg.seed)  # no real defect is needed to estimate
    synthetic_scores = image_scores(predict_maps(teacher, student, synthetic, **maps_kw))
    spec = calibrate(cfg, val_scores, cats, synthetic_scores)
    estimate = detection_estimate(spec, synthetic_scores, cats)
    report: dict = {}
    if splits.test:
        test_images = load_images(splits.test, cfg.image_size, "loading test")
        maps = predict_maps(teacher, student, test_images, **maps_kw)
        report = evaluate(splits.test, maps, load_masks(splits.test, cfg.image_size), spec)
        note = threshold_note(spec, estimate)
        (out / "report.md").write_text(markdown_table(report) + note)
    report["synthetic_anomalies"] = estimate
    write_json_atomic(out / "report.json", report)
    save_atomic(teacher.state_dict(), out / "teacher.pt")
    save_atomic(student.deployable_state_dict(), out / "student.pt")
    training = {k: state[k] for k in ("best_epoch", "best_val", "history", "seconds")}
    manifest = build_manifest(
        cfg,
        teacher.channels,
        [4, 8, 16],
        teacher_info(cfg, len(splits.train), TeacherChoice(**state["teacher"])),
        splits.summary(),
        spec,
        report,
        training,
    )
    manifest.write(out)
    return manifest.data
