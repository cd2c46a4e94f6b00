"""Calibrations served as versions of the deciding model: thresholds change without a restart.

The build writes version 1 of the deciding model (`postprocess` in the ensemble layout,
`calibrate` in the fused one) with the scoring record in its config parameter. A re-fitted
calibration (`dcam-review apply`) is a new version folder of that model, a copy of the one before
with `calibration.json` beside its `model.py`: the whole scoring record with the new thresholds,
the build it belongs to, and who applied it, when and from which labels. Triton serves the latest
version (the default version policy) and the ensemble's step asks for the latest (-1), so a new
folder is taken up by the repository poll or one model-control `load`, with no restart. The
deciding model answers each image's `calibration_version`, so every result row names the
calibration that decided it.

Copied beside the Triton models at build time, like scoring.py: json and siblings only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

if __package__:  # imported as dcam.core.served_calibration
    from dcam.core.scoring import ConfigError, ScoringSpec
else:  # a copy beside a Triton model: always its siblings, even where dcam is installed
    from scoring import ConfigError, ScoringSpec  # type: ignore[no-redef]

CALIBRATION_FILE = "calibration.json"  # in a version folder of the deciding model
BUILD_ID_PARAMETER = "build_id"  # model-config parameter: which build the repository is
RECORD_FORMAT = 1


@dataclass(frozen=True)
class CalibrationRecord:
    """One served calibration version: the scoring record and where it came from."""

    version: int
    build_id: str
    scoring: ScoringSpec
    applied_by: str = ""
    applied_at: str = ""  # ISO 8601, UTC
    previous: int | None = None  # the version a rollback of this one serves again
    source: Mapping[str, Any] = field(default_factory=dict)  # labels, targets, bounds, for people

    def to_dict(self) -> dict:
        return {
            "format": RECORD_FORMAT,
            "version": self.version,
            "build_id": self.build_id,
            "scoring": self.scoring.to_dict(),
            "applied_by": self.applied_by,
            "applied_at": self.applied_at,
            "previous": self.previous,
            "source": dict(self.source),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CalibrationRecord:
        if values.get("format") != RECORD_FORMAT:
            raise ConfigError(
                f"calibration record format {values.get('format')!r}; this dcam reads "
                f"{RECORD_FORMAT}"
            )
        try:
            return cls(
                version=int(values["version"]),
                build_id=str(values["build_id"]),
                scoring=ScoringSpec.from_dict(values["scoring"]),
                applied_by=str(values.get("applied_by", "")),
                applied_at=str(values.get("applied_at", "")),
                previous=None if values.get("previous") is None else int(values["previous"]),
                source=dict(values.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed calibration record: {exc!r}") from exc


def same_rule(base: ScoringSpec, other: ScoringSpec) -> None:
    """Refuse a record whose rule differs from the build's beyond thresholds: size, combination,
    smoothing, products and normalisation statistics are the build's; only thresholds move."""
    problems = []
    if (tuple(base.size), base.combine, base.sigma) != (
        tuple(other.size),
        other.combine,
        other.sigma,
    ):
        problems.append("size, combination or smoothing")
    if sorted(base.per_category) != sorted(other.per_category):
        problems.append(f"products {sorted(other.per_category)} != {sorted(base.per_category)}")
    pairs = [(base.calibration, other.calibration)] + [
        (base.per_category[c], other.per_category[c])
        for c in base.per_category
        if c in other.per_category
    ]
    if any((a.mean, a.std) != (b.mean, b.std) for a, b in pairs):
        problems.append("normalisation statistics")
    if problems:
        raise ConfigError(f"calibration record differs from the build in {', '.join(problems)}")


def read_record(version_dir: str) -> CalibrationRecord | None:
    """The record in a version folder, None where it has none (version 1 of a build)."""
    path = os.path.join(version_dir, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        try:
            values = json.load(fh)
        except ValueError as exc:
            raise ConfigError(f"{path}: not JSON: {exc}") from exc
    return CalibrationRecord.from_dict(values)


def served_spec(version_dir: str, base: ScoringSpec, build_id: str | None) -> ScoringSpec:
    """The scoring record a version of the deciding model serves: its calibration.json where it
    has one (checked against the build), else the build's own record from the config."""
    record = read_record(version_dir)
    if record is None:
        return base
    if build_id is not None and record.build_id != build_id:
        raise ConfigError(
            f"{version_dir}: calibration of build {record.build_id}, this repository is "
            f"build {build_id}"
        )
    same_rule(base, record.scoring)
    return record.scoring
