"""Shared fixtures: a small generated dataset and one tiny training run (random teacher, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dcam.datasets.synthetic import generate_dataset
from dcam.training.config import TrainConfig

torch.set_num_threads(2)

# Two products, a few images each: enough for every stage to run, small enough for CPU tests.
SYNTHETIC = {
    "categories": ["carpet", "nut"],
    "n_train": 12,
    "n_test_good": 3,
    "n_test_per_defect": 2,
}
TINY = {"image_size": 64, "batch_size": 8, "teacher": "random", "device": "cpu", "sigma": 2.0}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, **SYNTHETIC, size=64, seed=1)
    return root


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{"data": (str(data),), "out": str(out), "epochs": 2, **TINY, **overrides})


@pytest.fixture(scope="session")
def tiny_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dcam.training.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(synthetic_root, out))
    return out


def _build(run: Path, out: Path, layout: str) -> Path:
    from dcam.build.config import BuildConfig
    from dcam.build.engines import build_repository

    build_repository(BuildConfig(run_dir=str(run), out=str(out), target="cpu", layout=layout))
    return out


@pytest.fixture(scope="session")
def ensemble_repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tiny_run, tmp_path_factory.mktemp("repos") / "ensemble", "ensemble")


@pytest.fixture
def gpu_input_repo(ensemble_repo: Path, tmp_path: Path) -> Path:
    """The CPU repository with postprocess configured for GPU inputs, as `--target trt` writes
    it (FORCE_CPU_ONLY_INPUT_TENSORS "no"), edited through Triton's own config protobuf."""
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = shutil.copytree(ensemble_repo, tmp_path / "gpu-input-repo")
    path = repo / "postprocess" / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
    path.write_text(text_format.MessageToString(config))
    return repo


@pytest.fixture(scope="session")
def fused_repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tiny_run, tmp_path_factory.mktemp("repos") / "fused", "fused")


@pytest.fixture(scope="session")
def trt_pod_repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --target trt build whose plans the serving image builds (no TensorRT needed here):
    the fused layout, its FP16 graph, the references and build_plans.py."""
    from dcam.build.config import BuildConfig
    from dcam.build.engines import build_repository

    out = tmp_path_factory.mktemp("repos") / "trt-pod"
    build_repository(BuildConfig(run_dir=str(tiny_run), out=str(out), target="trt", plans="pod"))
    return out


# Fixtures that train a model (or pretrain a teacher) or build a repository: a test using one,
# directly or through another fixture, is marked `training`, so `make check` leaves it to
# `make test`. `line` (test_line_metrics.py) trains and serves; `tiny_pretrain`
# (test_fractal.py) pretrains a teacher.
TRAINING_FIXTURES = frozenset(
    {
        "tiny_run",
        "ensemble_repo",
        "fused_repo",
        "gpu_input_repo",
        "trt_pod_repo",
        "line",
        "tiny_pretrain",
    }
)
# Tests that train (or run the GPU check's CPU smoke) inside their own body: each took 4 s to
# minutes here (pytest --durations).
TRAINING_TESTS = frozenset(
    {
        "tests/test_train.py::test_auto_teacher_is_recorded_and_kept_on_resume",
        "tests/test_cli.py::test_train_command_end_to_end",
        "tests/test_fractal.py::test_train_with_formula_teacher_offline",
        "tests/test_gpu_check.py::test_gpu_check_cpu_smoke_without_install_or_git",
        "tests/test_train.py::test_resume_continues_exactly",
        "tests/test_train.py::test_a_few_steps_lower_the_loss",
        "tests/test_train.py::test_adapted_teacher_is_what_ships",
        "tests/test_benchmarks.py::test_teacher_study_ranks_teachers_over_data_sets",
        "tests/test_formulas.py::test_cli_pretrains_on_each_family_and_records_it",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if TRAINING_FIXTURES.intersection(fixtures) or item.nodeid in TRAINING_TESTS:
            item.add_marker(pytest.mark.training)
