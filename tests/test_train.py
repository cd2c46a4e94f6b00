from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcam.core.errors import DcamError
from dcam.datasets.layout import discover, load_images
from dcam.training.config import TrainConfig
from dcam.training.levers import augment, learning_rate
from dcam.training.model import Student, load_teacher
from dcam.training.train import run_epoch, train
from tests.conftest import tiny_config


def test_a_few_steps_lower_the_loss(synthetic_root: Path) -> None:
    cfg = tiny_config(synthetic_root, "unused", lr=0.1)
    images = load_images(discover([synthetic_root]).train, 64)
    torch.manual_seed(0)
    teacher = load_teacher("resnet18", "random")
    student = Student("resnet18", teacher.channels, cfg.dcam, cfg.dcam_mode)
    opt = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [
        run_epoch(teacher, student, images, cfg, torch.device("cpu"), e, opt, scaler)
        for e in range(4)
    ]
    assert losses[-1] < 0.8 * losses[0], losses


def test_run_writes_weights_manifest_and_report(tiny_run: Path) -> None:
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    for key in (
        "backbone",
        "layers",
        "input",
        "mean",
        "std",
        "scoring",
        "dcam",
        "losses",
        "teacher",
        "data",
        "metrics",
        "versions",
        "training",
    ):
        assert key in manifest
    assert manifest["teacher"]["source"] == "random"
    assert manifest["dcam"] == {"variant": "channel", "mode": "mask", "in_deployed_student": False}
    assert manifest["input"]["size"] == [64, 64]
    assert manifest["manifest_version"] == 2
    glob = manifest["scoring"]["global"]
    assert glob["std"] > 0 and set(manifest["scoring"]["per_category"]) == {"carpet", "nut"}
    assert manifest["scoring"]["rule"].startswith("z-score of held-out good images")
    student = torch.load(tiny_run / "student.pt", weights_only=True)
    assert not any("dcam" in k for k in student)
    teacher = torch.load(tiny_run / "teacher.pt", weights_only=True)
    assert set(teacher) == set(student)
    report = json.loads((tiny_run / "report.json").read_text())
    assert set(report["per_category"]) == {"carpet", "nut"}
    for values in report["per_category"].values():
        assert 0.0 <= values["image_auroc"] <= 1.0 and 0.0 <= values["pro"] <= 1.0
    assert "| **mean** |" in (tiny_run / "report.md").read_text()
    assert TrainConfig.from_dict(json.loads((tiny_run / "config.json").read_text())).epochs == 2


def test_resume_continues_exactly(synthetic_root: Path, tmp_path: Path) -> None:
    straight = tiny_config(synthetic_root, tmp_path / "straight", epochs=3)
    train(straight)
    interrupted = tiny_config(synthetic_root, tmp_path / "resumed", epochs=2)
    train(interrupted)  # as if stopped after epoch 2 of 3
    resumed = tiny_config(synthetic_root, tmp_path / "resumed", epochs=3)
    manifest = train(resumed, resume=True)
    assert [h["epoch"] for h in manifest["training"]["history"]] == [1, 2, 3]
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["student"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_resume_refuses_changed_settings(tiny_run: Path, synthetic_root: Path) -> None:
    with pytest.raises(DcamError, match="lr"):
        train(tiny_config(synthetic_root, tiny_run, lr=0.01), resume=True)


def test_existing_output_is_not_overwritten(tiny_run: Path, synthetic_root: Path) -> None:
    before = (tiny_run / "student.pt").read_bytes()
    with pytest.raises(DcamError, match="--force"):
        train(tiny_config(synthetic_root, tiny_run))
    assert (tiny_run / "student.pt").read_bytes() == before


def test_best_epoch_is_the_lowest_held_out_loss(tiny_run: Path) -> None:
    training = json.loads((tiny_run / "manifest.json").read_text())["training"]
    losses = [h["val_loss"] for h in training["history"]]
    assert training["best_epoch"] == int(np.argmin(losses)) + 1


def test_adapted_teacher_is_what_ships(synthetic_root: Path, tmp_path: Path) -> None:
    """--adapt-teacher-bn: the teacher.pt that the build exports carries the re-estimated
    BatchNorm statistics, and the manifest says so; the report shows both calibration readings."""
    out = tmp_path / "run"
    manifest = train(tiny_config(synthetic_root, out, epochs=1, adapt_teacher_bn=True))
    assert "AdaBN" in manifest["teacher"]["batchnorm"]
    teacher = torch.load(out / "teacher.pt", weights_only=True)
    assert not torch.allclose(teacher["bn1.running_mean"], torch.zeros(64))  # random init: 0
    readings = manifest["metrics"]["calibration_readings"]
    assert set(readings) == {"global", "per_product"}
    assert all(0 <= r["false_positive_rate"] <= 1 for r in readings.values())
    report_md = (out / "report.md").read_text()
    assert "| per_product |" in report_md
    assert "Estimated detection rate on synthetic anomalies" in report_md
    estimate = manifest["metrics"]["synthetic_anomalies"]
    assert 0.0 <= estimate["detection_rate"] <= 1.0 and set(estimate["per_category"]) == {
        "carpet",
        "nut",
    }


def test_auto_teacher_is_recorded_and_kept_on_resume(
    monkeypatch: pytest.MonkeyPatch, synthetic_root: Path, tmp_path: Path
) -> None:
    """Offline, `--teacher auto` distils from the shipped formula teacher and the manifest says
    so and why; resumed once ImageNet weights are cached, the run keeps its teacher."""
    from dcam.teacher import sources

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(sources, "_unreachable", lambda host, port=443: "no network (test)")
    out = tmp_path / "run"
    first = train(tiny_config(synthetic_root, out, teacher="auto", epochs=1))
    assert first["teacher"]["source"] == "formula" and first["teacher"]["requested"] == "auto"
    assert "no network (test)" in first["teacher"]["reason"]
    assert first["teacher"]["weights"] == "formula_resnet18.pt"
    cached = sources.imagenet_cache_path("resnet18")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")  # auto would now pick imagenet (and fail to read this file)
    resumed = train(tiny_config(synthetic_root, out, teacher="auto", epochs=2), resume=True)
    assert resumed["teacher"] == first["teacher"]


def test_cosine_schedule_decays_to_zero_and_constant_stays() -> None:
    cfg = TrainConfig(data=("x",), epochs=4, lr=0.4, lr_schedule="cosine")
    assert [learning_rate(cfg, e) for e in range(4)] == pytest.approx(
        [0.4, 0.4 * (1 + np.cos(np.pi / 4)) / 2, 0.2, 0.4 * (1 + np.cos(3 * np.pi / 4)) / 2]
    )
    constant = TrainConfig(data=("x",), epochs=4, lr=0.4)
    assert {learning_rate(constant, e) for e in range(4)} == {0.4}


@pytest.mark.parametrize(
    "bad",
    [
        {"level_weights": (1.0, 1.0)},
        {"level_weights": (1.0, -1.0, 1.0)},
        {"level_weights": (0.0, 0.0, 0.0)},
        {"lr_schedule": "step"},
        {"feature_norm": "layer"},
    ],
)
def test_lever_settings_are_checked(bad: dict) -> None:
    with pytest.raises(DcamError):
        TrainConfig(data=("x",), **bad)


def test_levers_train_and_round_trip(synthetic_root: Path, tmp_path: Path) -> None:
    """A run with every training-side lever of issue 23 on trains, and its config.json reads
    back to the same settings (what --resume compares against)."""
    cfg = tiny_config(
        synthetic_root,
        tmp_path / "run",
        epochs=1,
        lr_schedule="cosine",
        level_weights=(0.5, 1.0, 2.0),
        feature_norm="channel",
        augment="flip",
    )
    manifest = train(cfg)
    assert np.isfinite(manifest["training"]["best_val"])
    saved = TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    assert saved == cfg


def test_augmentations_keep_the_batch_and_are_seeded() -> None:
    x = torch.randn(6, 3, 8, 8)
    flipped = augment(x, "flip", torch.Generator().manual_seed(0))
    assert torch.equal(flipped, augment(x, "flip", torch.Generator().manual_seed(0)))
    for original, out in zip(x, flipped, strict=True):  # each image is one of its four flips
        assert any(torch.equal(out, original.flip(d)) for d in ([], [1], [2], [1, 2]))
    with pytest.raises(DcamError, match="unknown augmentation"):
        augment(x, "rotate", torch.Generator())
    lit = augment(x, "photometric", torch.Generator().manual_seed(0))
    for original, out in zip(x, lit, strict=True):  # one gain and offset per image
        gain = (out - out.mean()).norm() / (original - original.mean()).norm()
        assert 0.9 - 1e-5 <= gain <= 1.1 + 1e-5
        assert torch.allclose(out, original * gain + (out - original * gain).mean(), atol=1e-5)


def test_resume_keeps_a_cosine_schedules_length(synthetic_root: Path, tmp_path: Path) -> None:
    """Resuming with more epochs would stretch the decay half way through: refused loudly."""
    cfg = tiny_config(synthetic_root, tmp_path / "run", epochs=1, lr_schedule="cosine")
    train(cfg)
    longer = tiny_config(synthetic_root, tmp_path / "run", epochs=2, lr_schedule="cosine")
    with pytest.raises(DcamError, match="cannot change under --lr-schedule cosine"):
        train(longer, resume=True)
