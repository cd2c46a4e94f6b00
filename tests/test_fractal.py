"""Fractal (FractalDB-style) rendering, teacher pretraining, its saved weights and its CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcam.core.errors import DcamError
from dcam.nets.features import FeatureExtractor, load_backbone_weights
from dcam.teacher import shipped
from dcam.teacher.cli import teacher_group
from dcam.teacher.config import PretrainConfig, data_families
from dcam.teacher.fractal import (
    filling_rate,
    make_classes,
    map_probabilities,
    render_batch,
    sample_ifs,
)
from dcam.teacher.pretrain import pretrain
from dcam.teacher.sources import load_teacher

TINY = {"n_classes": 8, "image_size": 32, "batch_size": 32, "device": "cpu", "minutes": None}


@pytest.fixture(scope="module")
def systems() -> list[np.ndarray]:
    return make_classes(8, seed=0)


@pytest.fixture(scope="module")
def tiny_pretrain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fractal") / "teacher"
    # A fixed cached set (8 instances per class) so that 4 epochs measurably lower the loss.
    result = pretrain(PretrainConfig(out=str(out), instances_per_class=8, max_images=256, **TINY))
    return out, result


def test_sample_ifs_contracts_and_weights_maps_by_determinant() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        ifs = sample_ifs(rng)
        assert ifs.shape[1:] == (2, 3) and 2 <= len(ifs) <= 4
        assert (np.linalg.norm(ifs[:, :, :2], ord=2, axis=(1, 2)) < 1).all()
        det = np.abs(np.linalg.det(ifs[:, :, :2]))
        np.testing.assert_allclose(map_probabilities(ifs), det / det.sum())
    assert len(sample_ifs(rng, n_maps=3)) == 3
    with pytest.raises(DcamError):
        sample_ifs(rng, n_maps=5)


def test_classes_are_deterministic_and_fill_the_image(systems: list[np.ndarray]) -> None:
    again = make_classes(8, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(systems, again, strict=True))
    assert not np.array_equal(make_classes(8, seed=1)[0], systems[0])
    rates = filling_rate(systems, 64, np.random.default_rng(7))
    assert ((rates > 0.04) & (rates < 0.4)).all(), rates  # search range (0.05, 0.35) + noise


def test_render_is_deterministic_varied_and_not_empty(systems: list[np.ndarray]) -> None:
    ids = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7])
    a = render_batch(systems, ids, np.random.default_rng(3), 64)
    b = render_batch(systems, ids, np.random.default_rng(3), 64)
    assert a.dtype == np.uint8 and a.shape == (9, 64, 64, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render_batch(systems, ids, np.random.default_rng(4), 64))
    background = a[:, :1, :1]  # the margin keeps the corner pixel free
    foreground = (a != background).any(-1).mean((1, 2))
    assert ((foreground > 0.02) & (foreground < 0.6)).all(), foreground
    assert (a.reshape(9, -1).std(1) > 5).all()
    shapes = (a != background).any(-1)
    for i in range(2, 9):  # different classes draw different shapes
        assert (shapes[1] != shapes[i]).mean() > 0.02


def test_pretraining_lowers_the_loss_and_writes_outputs(tiny_pretrain: tuple[Path, dict]) -> None:
    out, result = tiny_pretrain
    history = result["history"]
    assert len(history) >= 4 and result["images_seen"] == 256
    first = np.mean([h["loss"] for h in history[:2]])
    last = np.mean([h["loss"] for h in history[-2:]])
    assert last < first, history
    info = json.loads((out / "teacher.json").read_text())
    expected = {"backbone", "classes", "images_seen", "resolution", "accuracy", "seed", "minutes"}
    assert expected | {"device", "torch"} <= set(info)
    assert info["classes"] == 8 and info["resolution"] == 32 and 0.0 <= info["accuracy"] <= 1.0


def test_saved_weights_are_fp16_and_load_strictly(tiny_pretrain: tuple[Path, dict]) -> None:
    out, _ = tiny_pretrain
    state = torch.load(out / "teacher.pt", map_location="cpu", weights_only=True)
    net = FeatureExtractor("resnet18")
    assert set(state) == set(net.state_dict())  # stem + layers 1-3 only: no head, no layer4
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_backbone_weights(net, state, "test")
    assert torch.equal(net.conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize("source", list(shipped.SHIPPED_TEACHERS))
def test_load_teacher_reads_shipped_weights(
    source: str,
    tiny_pretrain: tuple[Path, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(DcamError, match="missing"):
        load_teacher("resnet18", source)
    with pytest.raises(DcamError, match=f"no shipped {source} teacher"):
        load_teacher("wide_resnet50_2", source)
    shutil.copy(tiny_pretrain[0] / "teacher.pt", tmp_path / f"{source}_resnet18.pt")
    teacher = load_teacher("resnet18", source)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in teacher.parameters())
    features = teacher(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [64, 128, 256]


def test_config_needs_a_budget() -> None:
    with pytest.raises(DcamError, match="budget"):
        PretrainConfig(out="x", minutes=None, max_images=None)


def test_cli_pretrain_writes_teacher(tmp_path: Path) -> None:
    out = tmp_path / "t"
    args = ["pretrain", "--out", str(out), "--classes", "4", "--image-size", "32"]
    args += ["--batch-size", "8", "--max-images", "16", "--minutes", "0", "--device", "cpu"]
    result = CliRunner().invoke(teacher_group, args)
    assert result.exit_code == 0, result.output
    assert (out / "teacher.pt").is_file()
    assert json.loads((out / "teacher.json").read_text())["images_seen"] == 16
    again = CliRunner().invoke(teacher_group, args)
    assert again.exit_code != 0 and "--force" in again.output
    bad = CliRunner().invoke(teacher_group, [*args, "--force", "--classes", "1"])
    assert bad.exit_code != 0 and "n_classes >= 2" in bad.output  # DcamError, as a message


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the fractal teacher must work without the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)


@pytest.mark.parametrize("source", list(shipped.SHIPPED_TEACHERS))
def test_shipped_teacher_loads_offline(source: str, offline, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache
    path = shipped.shipped_weights_path(source, "resnet18")
    weights = torch.load(path, weights_only=True)
    assert set(weights) == set(FeatureExtractor("resnet18").state_dict())
    # Provenance travels beside the weights: what it saw, no photograph.
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["images_seen"] > 100_000 and data_families(info.get("data", "fractal"))
    teacher = load_teacher("resnet18", source)
    assert teacher.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(
        teacher.layer3[1].conv2.weight, weights["layer3.1.conv2.weight"].float()
    )
    # trained, not a fresh init: BatchNorm statistics moved away from their defaults
    assert not torch.allclose(teacher.bn1.running_var, torch.ones_like(teacher.bn1.running_var))


def test_train_with_formula_teacher_offline(
    monkeypatch, synthetic_root: Path, tmp_path: Path
) -> None:
    import json
    import socket

    from dcam.training.cli import train_command

    def no_network(*args, **kwargs):
        raise AssertionError("training with --teacher formula must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        train_command,
        [
            "--data",
            str(synthetic_root),
            "--out",
            str(out),
            "--teacher",
            "formula",
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["teacher"]["source"] == "formula"


def test_probe_scores_the_farthest_patch() -> None:
    from dcam.teacher.probe import farthest_patch

    bank = torch.zeros(10, 4)
    test = torch.zeros(2, 5, 4)
    test[1, 3] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # one patch at distance 5 from the bank
    np.testing.assert_allclose(farthest_patch(test, bank, chunk=2), [0.0, 5.0])


def test_probe_cli_judges_a_teacher_without_training(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    args = ["probe", "--data", str(synthetic_root), "--teacher", "random", "--image-size", "64"]
    result = CliRunner().invoke(teacher_group, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["per_category"]) == {"carpet", "nut"}
    assert all(0.0 <= v <= 1.0 for v in report["per_category"].values())
    assert report["config"]["adapt_bn"] is True and "mean image AUROC" in result.output
