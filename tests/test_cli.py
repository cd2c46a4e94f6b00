"""The CLIs through click's CliRunner, with real files."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dcam.datasets.cli import data_group
from dcam.training.cli import train_command


def test_synth_writes_dataset_and_refuses_non_empty(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ["synth", str(out), "--categories", "grid,capsule"]
    args += [
        "--size",
        "64",
        "--n-train",
        "4",
        "--n-test-good",
        "1",
        "--n-test-per-defect",
        "1",
        "--seed",
        "3",
    ]
    result = CliRunner().invoke(data_group, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "dataset.json").read_text())
    assert sorted(summary["categories"]) == ["capsule", "grid"]
    assert len(list((out / "grid" / "train" / "good").glob("*.png"))) == 4
    again = CliRunner().invoke(data_group, args)
    assert again.exit_code != 0 and "--force" in again.output


def test_synth_unknown_category(tmp_path: Path) -> None:
    result = CliRunner().invoke(data_group, ["synth", str(tmp_path / "x"), "--categories", "zz"])
    assert result.exit_code != 0 and "zz" in result.output


def test_train_command_end_to_end(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--data", str(synthetic_root), "--out", str(out)]
    args += [
        "--teacher",
        "random",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--dcam",
        "spatial",
    ]
    args += ["--dcam-mode", "side", "--losses", "cosine,spatial_cosine", "--device", "cpu"]
    args += ["--lr-schedule", "cosine", "--level-weights", "1, 0.5,2"]
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["level_weights"] == [1.0, 0.5, 2.0] and config["lr_schedule"] == "cosine"
    assert "| **mean** |" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["losses"] == ["cosine", "spatial_cosine"]
    assert manifest["dcam"]["variant"] == "spatial"
    refused = CliRunner().invoke(train_command, args)
    assert refused.exit_code == 1 and "--force" in refused.output


def test_train_command_errors_are_messages(synthetic_root: Path, tmp_path: Path) -> None:
    base = ["--data", str(synthetic_root), "--out", str(tmp_path / "r"), "--device", "cpu"]
    bad_loss = CliRunner().invoke(
        train_command, [*base, "--teacher", "random", "--losses", "cosine,mse"]
    )
    assert bad_loss.exit_code == 1 and "mse" in bad_loss.output
    bad_size = CliRunner().invoke(
        train_command, [*base, "--teacher", "random", "--image-size", "100"]
    )
    assert bad_size.exit_code == 1 and "multiple of 32" in bad_size.output
    for weights, says in (
        ("1,x,2", "not a list of numbers"),
        ("1,2", "one finite weight >= 0 per level"),
    ):
        bad_weights = CliRunner().invoke(
            train_command, [*base, "--teacher", "random", "--level-weights", weights]
        )
        assert bad_weights.exit_code != 0 and says in bad_weights.output, bad_weights.output
    no_weights = CliRunner().invoke(
        train_command, [*base, "--teacher-weights", str(tmp_path / "missing.pth")]
    )
    assert no_weights.exit_code == 1 and "missing.pth" in no_weights.output
    assert "Traceback" not in no_weights.output


def test_train_teacher_auto_says_which_and_why(monkeypatch, tmp_path: Path) -> None:
    """--teacher auto offline: one line naming the shipped formula teacher and the reason,
    before anything else happens (here: the data folder is then found missing)."""
    from dcam.teacher import sources

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(sources, "_unreachable", lambda host, port=443: "no network (test)")
    args = ["--data", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(train_command, [*args, "--teacher", "auto"])
    assert result.exit_code != 0 and "no-such-data" in result.output
    first = result.output.splitlines()[0]
    assert first.startswith("teacher: formula (") and "no network (test)" in first
