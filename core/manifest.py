"""The versioned JSON manifest: the only thing later stages read from a training run.

Training writes `manifest.json` (the deployed model: backbone, levels, input format, mean/std, the
scoring rule's settings and calibration; and its provenance: DCAM reading, losses, teacher, data,
metrics, versions). The build copies it into the model repository. `Manifest` validates it once
on reading and gives typed access, so no stage digs through the raw dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcam.core.errors import ConfigError, ManifestError
from dcam.core.files import write_json_atomic
from dcam.core.scoring import ScoringSpec

MANIFEST_VERSION = 1
FILENAME = "manifest.json"
REQUIRED = ("manifest_version", "backbone", "layers", "input", "anomaly_map", "normalization")


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; `data` is the JSON object as written."""

    data: Mapping[str, Any]
    scoring: ScoringSpec  # built and checked once, on reading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "manifest") -> Manifest:
        """Check the version and the keys downstream stages need; build the scoring record."""
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ManifestError(f"{origin} lacks the keys {missing}")
        if data["manifest_version"] != MANIFEST_VERSION:
            raise ManifestError(
                f"{origin} has manifest_version {data['manifest_version']}, "
                f"this dcam reads {MANIFEST_VERSION}"
            )
        try:
            scoring = scoring_from_sections(
                data["input"], data["anomaly_map"], data["normalization"]
            )
        except (ConfigError, KeyError, TypeError, IndexError) as exc:
            raise ManifestError(f"{origin}: invalid scoring settings ({exc!r})") from exc
        return cls(dict(data), scoring)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Read `<folder>/manifest.json` (a training run or a built model repository)."""
        path = Path(folder) / FILENAME
        if not path.is_file():
            raise ManifestError(f"{path} does not exist: is {folder} a dcam-train output folder?")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, str(path))

    def write(self, folder: Path) -> Path:
        return write_json_atomic(Path(folder) / FILENAME, dict(self.data))

    @property
    def backbone(self) -> str:
        return str(self.data["backbone"])

    @property
    def levels(self) -> list[str]:
        return list(self.data["layers"])

    @property
    def input_size(self) -> tuple[int, int]:
        return self.scoring.size

    @property
    def mean(self) -> list[float]:
        return list(self.data["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.data["std"])

    def weights_file(self, role: str) -> str:
        """teacher.pt or student.pt, as the training run named them."""
        return str(self.data["files"][role])


def scoring_sections(spec: ScoringSpec, method: str) -> dict[str, dict]:
    """The manifest's `anomaly_map` and `normalization` sections for a scoring record."""
    as_dict = spec.to_dict()
    return {
        "anomaly_map": {
            "distance": "1 - cos over channels",
            "upsample": "bilinear",
            "combine": spec.combine,
            "gaussian_sigma": spec.sigma,
            "image_score": "max",
        },
        "normalization": {
            "method": method,
            "global": as_dict["global"],
            "per_category": as_dict["per_category"],
        },
    }


def scoring_from_sections(
    input_section: Mapping, map_section: Mapping, normalization: Mapping
) -> ScoringSpec:
    """The scoring record from the manifest's `input`, `anomaly_map` and `normalization`."""
    return ScoringSpec.from_dict(
        {
            "size": input_section["size"],
            "combine": map_section["combine"],
            "sigma": map_section["gaussian_sigma"],
            "global": normalization["global"],
            "per_category": normalization.get("per_category", {}),
        }
    )
