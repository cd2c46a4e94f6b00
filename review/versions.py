"""Calibration versions of a built model repository: read, apply a new one, roll back.

A calibration is a version folder of the model that decides (core/served_calibration.py): a copy
of the latest folder with `calibration.json` beside it. A new folder is written under a name
Triton's version scan ignores (it skips names `std::stoll` cannot parse: ".staging-N") and
renamed into place, so a polling server never sees half a version. Folders are only ever
added: a rollback is a new version carrying the calibration before the one it undoes. Removing
the latest folder instead was tried: Triton 2.51 polling a repository loaded a new Python model
twice (its stub wrote `__pycache__` into the folder on the first load; the build now
byte-compiles each folder, `build/repository.py`), and a folder removed during the second load
left the poll stuck for good, serving the undone version. So version numbers are never reused
either, and a result row's `<build>/<version>` names one calibration for good. Every apply and
rollback is appended to `calibrations.jsonl` at the repository's root (Triton ignores files
there), under a lock, so two stations cannot write the same version.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dcam.build.report import REPORT_FILE, read_build_report
from dcam.core import drift
from dcam.core.errors import ConfigError, ManifestError
from dcam.core.manifest import Manifest
from dcam.core.names import CALIBRATE_MODEL, POSTPROCESS_MODEL
from dcam.core.scoring import ScoringSpec
from dcam.core.served_calibration import (
    CALIBRATION_FILE,
    CalibrationRecord,
    read_record,
    same_rule,
    served_spec,
)

HISTORY_FILE = "calibrations.jsonl"
LOCK_FILE = ".calibrations.lock"


class Repository:
    """A built model repository as the station sees it: its build, the deciding model, its
    calibration versions."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            report = read_build_report(self.root)
        except ManifestError as exc:
            raise ConfigError(
                f"--repository {root}: no {REPORT_FILE}: not a dcam-build output"
            ) from exc
        self.build_id: str | None = report.get("build_id")
        if self.build_id is None:
            raise ConfigError(
                f"--repository {root}: built without a build id (an older dcam-build): rebuild "
                "it to serve calibration versions"
            )
        self.layout = report.get("layout", "ensemble")
        self.model = POSTPROCESS_MODEL if self.layout == "ensemble" else CALIBRATE_MODEL
        self.model_dir = self.root / self.model
        if not self.model_dir.is_dir():
            raise ConfigError(f"--repository {root}: no {self.model}/ model folder")
        try:
            self.manifest = Manifest.read(self.root)  # the build's copy of the training manifest
        except ManifestError as exc:
            raise ConfigError(f"--repository {root}: {exc}") from exc
        self.base: ScoringSpec = self.manifest.scoring
        self.drift = _drift_spec(self.model_dir / "config.pbtxt")

    def versions(self) -> list[int]:
        """The deciding model's version folders, oldest first."""
        return sorted(
            int(p.name) for p in self.model_dir.iterdir() if p.is_dir() and _is_version(p.name)
        )

    def latest(self) -> int:
        versions = self.versions()
        if not versions:
            raise ConfigError(f"{self.model_dir}: no version folder")
        return versions[-1]

    def spec(self, version: int | None = None) -> ScoringSpec:
        """The scoring record a version serves (the latest by default)."""
        folder = self.model_dir / str(self.latest() if version is None else version)
        return served_spec(str(folder), self.base, self.build_id)

    def record(self, version: int) -> CalibrationRecord | None:
        return read_record(str(self.model_dir / str(version)))

    def history(self) -> list[dict[str, Any]]:
        """Every apply and rollback, oldest first."""
        path = self.root / HISTORY_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def calibration_name(self, version: int | None = None) -> str:
        """How result rows name a version: `<build id>/<version>`."""
        return f"{self.build_id}/{self.latest() if version is None else version}"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _log(self, entry: dict[str, Any]) -> None:
        with open(self.root / HISTORY_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def apply(
        self,
        thresholds: Mapping[str | None, float],
        applied_by: str,
        source: Mapping[str, Any] | None = None,
    ) -> CalibrationRecord:
        """A new version whose products in `thresholds` get those thresholds (z-score; None
        names the global calibration), the others keeping the latest version's. Returns its
        record."""
        if not applied_by.strip():
            raise ConfigError("say who applies the calibration (--operator)")
        bad = {k: v for k, v in thresholds.items() if not math.isfinite(float(v))}
        if bad:
            raise ConfigError(f"thresholds must be finite numbers, got {bad}")
        with self._locked():
            latest = self.latest()
            current = self.spec(latest)
            unknown = sorted(str(c) for c in set(thresholds) - {None, *current.per_category})
            if unknown:
                raise ConfigError(
                    f"unknown products {unknown}; this build has {sorted(current.per_category)}"
                )

            def moved(product: str | None, calibration):
                if product not in thresholds:
                    return calibration
                return dataclasses.replace(calibration, threshold=float(thresholds[product]))

            spec = dataclasses.replace(
                current,
                calibration=moved(None, current.calibration),
                per_category={c: moved(c, cal) for c, cal in current.per_category.items()},
            )
            record = self._record(spec, applied_by, latest, latest, source)
            self._publish(latest, record)
            self._log({"action": "apply", **record.to_dict()})
        return record

    def _record(
        self,
        spec: ScoringSpec,
        applied_by: str,
        latest: int,
        previous: int | None,
        source: Mapping[str, Any] | None,
    ) -> CalibrationRecord:
        """The next version's record, checked as the served model will check it at load."""
        same_rule(self.base, spec)
        if self.drift is not None:  # line metrics draw each product's law below its threshold
            for product in (None, *spec.per_category):
                try:
                    drift.DriftWindow(self.drift, spec.calibration_for(product))
                except (ValueError, OverflowError) as exc:
                    raise ConfigError(
                        f"{product or 'global'} threshold "
                        f"{spec.calibration_for(product).threshold:.3f} is too low for the "
                        f"line metrics' drift law ({exc}): the server would refuse this version"
                    ) from exc
        used = [latest, *(int(e["version"]) for e in self.history())]
        return CalibrationRecord(
            version=max(used) + 1,
            build_id=self.build_id,
            scoring=spec,
            applied_by=applied_by.strip(),
            applied_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            previous=previous,
            source=dict(source or {}),
        )

    def _publish(self, latest: int, record: CalibrationRecord) -> None:
        """Copy the latest folder under a name Triton skips, add the record, flush every file
        and the folder to disk, then rename it into place: a power cut leaves either no new
        version or a whole one. `__pycache__` is copied too: the copies keep their sources'
        times, so it stays valid and the stub writes nothing into the new folder while loading
        (a write would make a polling server load the version twice)."""
        staging = self.model_dir / f".staging-{record.version}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(
            self.model_dir / str(latest),
            staging,
            ignore=shutil.ignore_patterns(CALIBRATION_FILE),
        )
        text = json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n"
        (staging / CALIBRATION_FILE).write_text(text, encoding="utf-8")
        for path in sorted(staging.rglob("*"), reverse=True):  # files, then their folders
            _fsync(path)
        _fsync(staging)
        os.rename(staging, self.model_dir / str(record.version))
        _fsync(self.model_dir)

    def rollback(self, applied_by: str) -> CalibrationRecord:
        """Undo the latest calibration: a new version carrying the calibration it replaced
        (a second rollback goes one further back). Version 1, the build's own calibration, has
        nothing before it."""
        with self._locked():
            latest = self.latest()
            undone = self.record(latest)
            if undone is None or undone.previous is None:
                raise ConfigError(
                    f"{self.model_dir}: version {latest} serves the build's own calibration: "
                    "nothing to roll back"
                )
            restored = self.record(undone.previous)
            record = self._record(
                self.spec(undone.previous),
                applied_by or "unknown",
                latest,
                None if restored is None else restored.previous,
                {"rollback_of": latest, "restores": undone.previous},
            )
            self._publish(latest, record)
            self._log({"action": "rollback", **record.to_dict()})
        return record


def _drift_spec(config_path: Path) -> drift.DriftSpec | None:
    """The line metrics' drift rule the deciding model was built with (None: built without)."""
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    if drift.DRIFT_PARAMETER not in config.parameters:
        return None
    return drift.DriftSpec.from_json(config.parameters[drift.DRIFT_PARAMETER].string_value)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_version(name: str) -> bool:
    """A folder Triton reads as a version: digits, no leading zero."""
    return name.isdigit() and (name == "0" or not name.startswith("0"))
