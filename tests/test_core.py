"""dcam.core: the scoring record and rule, the manifest, the error family, atomic writes, and
CLI defaults that come from the stage dataclasses."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest

from dcam.core import scoring
from dcam.core.cli import default
from dcam.core.errors import (
    BuildError,
    ClientError,
    ConfigError,
    DcamError,
    ImageError,
    InputError,
    ManifestError,
    OutputExistsError,
    RetryableError,
    ServerError,
)
from dcam.core.files import write_atomic, write_json_atomic
from dcam.core.manifest import Manifest
from dcam.core.metrics import auroc
from dcam.core.scoring import Calibration, ScoringSpec


def _spec() -> ScoringSpec:
    return ScoringSpec(
        (16, 16),
        "sum",
        1.0,
        Calibration(0.5, 0.25, 2.0, 40),
        {"bottle": Calibration(0.16, 0.02, 3.0, 4), "capsule": Calibration(0.5, 0.1, 2.5, 4)},
    )


def test_scoring_spec_round_trips_through_the_triton_parameter() -> None:
    spec = _spec()
    assert ScoringSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["per_category"]["bottle"]["threshold"] == 3.0


def test_calibration_per_product_and_unknown_names() -> None:
    spec = _spec()
    assert spec.calibration_for(None) is spec.calibration
    assert spec.calibration_for("bottle").mean == 0.16
    with pytest.raises(ConfigError, match=r"unknown category 'sofa'.*bottle.*capsule"):
        spec.calibration_for("sofa")


def test_score_applies_the_chosen_calibration_and_threshold() -> None:
    rng = np.random.default_rng(0)
    t = [rng.normal(size=(3, 8, 4, 4)).astype(np.float32)]
    s = [rng.normal(size=(3, 8, 4, 4)).astype(np.float32)]
    spec = _spec()
    out = scoring.score(spec, t, s)
    raw = out.maps.reshape(3, -1).max(1)
    np.testing.assert_allclose(out.raw, raw)
    np.testing.assert_allclose(out.normalised, (raw - 0.5) / 0.25, rtol=1e-6)
    np.testing.assert_array_equal(out.decisions, out.normalised > 2.0)
    bottle = scoring.score(spec, t, s, category="bottle")
    np.testing.assert_allclose(bottle.normalised, (raw - 0.16) / 0.02, rtol=1e-5)
    low = scoring.score(spec, t, s, threshold=-1e9)
    assert low.decisions.all()


@pytest.mark.parametrize("value", ["abc", "nan", "inf", [1]])
def test_request_threshold_refuses_non_numbers(value) -> None:
    with pytest.raises(ValueError, match="finite number"):
        scoring.request_threshold({"threshold": value})
    assert scoring.request_threshold({}) is None
    assert scoring.request_threshold({"threshold": "1.5"}) == 1.5


def _manifest_data(spec: ScoringSpec) -> dict:
    return {
        "manifest_version": 2,
        "backbone": "resnet18",
        "layers": ["layer1", "layer2", "layer3"],
        "files": {"teacher": "teacher.pt", "student": "student.pt"},
        "input": {"size": [16, 16]},
        "mean": [0.1, 0.2, 0.3],
        "std": [1, 1, 1],
        "scoring": spec.to_dict(),
    }


def test_manifest_validates_once_and_gives_typed_access(tmp_path: Path) -> None:
    spec = dataclasses.replace(_spec(), rule="gumbel, 1%")
    data = _manifest_data(spec)
    manifest = Manifest.from_dict(data)
    assert manifest.scoring == spec and manifest.input_size == (16, 16)
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path).scoring == spec
    with pytest.raises(ManifestError, match="manifest_version 3"):
        Manifest.from_dict({**data, "manifest_version": 3})
    bad = {**data, "scoring": {**data["scoring"], "combine": "median"}}
    with pytest.raises(ManifestError, match="invalid scoring settings"):
        Manifest.from_dict(bad)
    with pytest.raises(ManifestError, match="differs from the scoring record"):
        Manifest.from_dict({**data, "input": {"size": [32, 32]}})
    with pytest.raises(ManifestError, match="lacks the keys"):
        Manifest.from_dict({"manifest_version": 2})


def test_version_1_manifests_still_read() -> None:
    """Version 1 split the scoring record into sections with other key names."""
    spec = dataclasses.replace(_spec(), rule="Gumbel fit")
    data = {k: v for k, v in _manifest_data(spec).items() if k != "scoring"}
    v1 = {
        **data,
        "manifest_version": 1,
        "anomaly_map": {
            "distance": "1 - cos over channels",
            "combine": "sum",
            "gaussian_sigma": 1.0,
        },
        "normalization": {
            "method": "Gumbel fit",
            "global": {"mean": 0.5, "std": 0.25, "threshold": 2.0, "n": 40},
            "per_category": {k: dataclasses.asdict(v) for k, v in spec.per_category.items()},
        },
    }
    assert Manifest.from_dict(v1).scoring == spec
    with pytest.raises(ManifestError, match="lacks the keys"):
        Manifest.from_dict({**data, "manifest_version": 1})


def test_support_modules_run_beside_a_triton_model_without_dcam(tmp_path: Path) -> None:
    """The build copies these modules beside each Python model; there they import only each
    other (dcam is blocked here, as where it is not installed)."""
    from dcam.build.repository import SUPPORT_MODULES

    for module in SUPPORT_MODULES:
        (tmp_path / Path(module.__file__).name).write_text(Path(module.__file__).read_text())
    code = (
        "import sys\n"
        "sys.modules['dcam'] = None\n"
        "import numpy as np, calibration, drift, scoring\n"
        f"spec = scoring.ScoringSpec.from_json({_spec().to_json()!r})\n"
        "z, flagged = scoring.judge_request(spec, np.array([0.16, 0.3]), {'category': 'bottle'})\n"
        "assert flagged.tolist() == [False, True], flagged\n"
        "assert scoring.Calibration is calibration.Calibration\n"
        "window = drift.DriftWindow(drift.DriftSpec(), spec.calibration_for('bottle'))\n"
        "assert len(window.edges) == 9\n"
        "try:\n"
        "    spec.calibration_for('nut')\n"
        "except ValueError as exc:\n"
        "    assert type(exc) is scoring.ConfigError is drift.ConfigError, type(exc)\n"
        "else:\n"
        "    raise AssertionError('unknown product accepted')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_one_error_family() -> None:
    for cls in (
        ConfigError,
        InputError,
        ManifestError,
        ImageError,
        OutputExistsError,
        BuildError,
        ServerError,
        ClientError,
        RetryableError,
    ):
        assert issubclass(cls, DcamError)
    assert issubclass(RetryableError, ClientError)
    # Former bare ValueErrors keep their old base, so callers catching ValueError still work.
    assert issubclass(ConfigError, ValueError) and issubclass(InputError, ValueError)
    with pytest.raises(InputError):
        auroc(np.array([True, True]), np.array([0.1, 0.2]))


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "a.json", {"v": 1})

    def broken(fh) -> None:
        fh.write(b'{"v": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, broken)
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left behind


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    """Not mkstemp's owner-only 0600: shipped weights and reports are read by others."""
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "a.json", {"v": 1})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644


# Options named differently from their field; None: deliberately not the library's default
# (dcam-serve listens on Triton's usual ports, where the library picks free ones for tests).
RENAMED = {
    "ready_timeout": "ready_timeout_s",
    "timeout": "timeout_s",
    "resolve_every": "resolve_every_s",
}
SERVE_PORTS = {"http_port": None, "grpc_port": None, "metrics_port": None}


def _commands() -> list[tuple[click.Command, object, dict[str, str | None]]]:
    """Each CLI command, the dataclass (or function) it maps onto, and its exceptions."""
    from dcam.build.cli import build_group
    from dcam.build.config import BuildConfig
    from dcam.client.cli import client_group
    from dcam.client.score import ScoreConfig
    from dcam.datasets.cli import data_group
    from dcam.datasets.synthetic import generate_dataset
    from dcam.serve.cli import serve_command
    from dcam.serve.server import ServerConfig
    from dcam.teacher.cli import teacher_group
    from dcam.teacher.config import PretrainConfig, ProbeConfig
    from dcam.training.cli import train_command
    from dcam.training.config import TrainConfig

    return [
        (train_command, TrainConfig, {}),
        (build_group.commands["engines"], BuildConfig, {}),
        (data_group.commands["synth"], generate_dataset, {}),
        (teacher_group.commands["pretrain"], PretrainConfig, {}),
        (teacher_group.commands["probe"], ProbeConfig, {}),
        (serve_command, ServerConfig, SERVE_PORTS),
        (client_group.commands["score"], ScoreConfig, {}),
    ]


@pytest.mark.parametrize("index", range(7))
def test_cli_defaults_come_from_the_stage_config(index: int) -> None:
    """Every option that names a config field shows that field's default: one source."""
    command, owner, exceptions = _commands()[index]
    renamed = {**RENAMED, **exceptions}
    checked = 0
    for param in command.params:
        if not isinstance(param, click.Option) or param.name == "force":
            continue
        field = renamed.get(param.name, param.name)
        if field is None:
            continue
        try:
            expected = default(owner, field)
        except KeyError:
            continue  # an option with no config field (paths, ports, --glob, ...)
        got = param.default
        if isinstance(expected, tuple) and isinstance(got, str):
            expected = ",".join(str(v) for v in expected)  # comma-separated list options
        if param.multiple:
            got = tuple(got)
        assert got == expected, (param.name, got, expected)
        assert command.context_settings.get("show_default"), command.name
        checked += 1
    assert checked >= 3


def test_help_of_torch_free_commands_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from dcam.training.cli import train_command\n"
        "from dcam.teacher.cli import teacher_group\n"
        "from dcam.datasets.cli import data_group\n"
        "from dcam.serve.cli import serve_command\n"
        "from dcam.client.cli import client_group\n"
        "import dcam.core.manifest, dcam.core.scoring, dcam.core.metrics\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
