"""The versioned JSON manifest: the only thing later stages read from a training run.

Training writes `manifest.json` (the deployed model: backbone, levels, input format, mean/std,
and the scoring record `scoring` exactly as `ScoringSpec.to_dict()` writes it; and its
provenance: DCAM reading, losses, teacher, data, metrics, versions). The build copies it into
the model repository. `Manifest` validates it once on reading and gives typed access, so no
stage digs through the raw dict. Version 1 manifests (the record split into `anomaly_map` and
`normalization` sections) still read.
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

MANIFEST_VERSION = 2  # 2: the scoring record as `ScoringSpec.to_dict()`; 1 still reads
FILENAME = "manifest.json"
REQUIRED = ("manifest_version", "backbone", "layers", "input", "scoring")
REQUIRED_V1 = ("manifest_version", "backbone", "layers", "input", "anomaly_map", "normalization")


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; `data` is the JSON object as written."""

    data: Mapping[str, Any]
    scoring: ScoringSpec  # built and checked once, on reading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "manifest") -> Manifest:
        """Check the version and the keys downstream stages need; build the scoring record."""
        version = data.get("manifest_version")
        missing = [k for k in (REQUIRED_V1 if version == 1 else REQUIRED) if k not in data]
        if missing:
            raise ManifestError(f"{origin} lacks the keys {missing}")
        if version not in (1, MANIFEST_VERSION):
            raise ManifestError(
                f"{origin} has manifest_version {version}, this dcam reads 1 and {MANIFEST_VERSION}"
            )
        try:
            if version == 1:
                scoring = scoring_from_v1_sections(
                    data["input"], data["anomaly_map"], data["normalization"]
                )
            else:
                scoring = ScoringSpec.from_dict(data["scoring"])
        except (ConfigError, KeyError, TypeError, IndexError) as exc:
            raise ManifestError(f"{origin}: invalid scoring settings ({exc!r})") from exc
        if list(scoring.size) != list(data["input"].get("size", scoring.size)):
            raise ManifestError(
                f"{origin}: input size {data['input']['size']} differs from the scoring "
                f"record's {list(scoring.size)}"
            )
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


def scoring_from_v1_sections(
    input_section: Mapping, map_section: Mapping, normalization: Mapping
) -> ScoringSpec:
    """The scoring record from a version 1 manifest's `input`, `anomaly_map` and
    `normalization` sections (keys renamed since; its `method` is the record's `rule`)."""
    return ScoringSpec.from_dict(
        {
            "size": input_section["size"],
            "combine": map_section["combine"],
            "sigma": map_section["gaussian_sigma"],
            "global": normalization["global"],
            "per_category": normalization.get("per_category", {}),
            "rule": normalization.get("method", ""),
        }
    )
