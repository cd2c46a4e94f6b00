"""The build report (`build_report.json`) that `dcam-build engines` writes beside the models:
read by `verify` and `deploy`, without importing the exporter (and torch)."""

from __future__ import annotations

import json
from pathlib import Path

from dcam.core.errors import ManifestError

REPORT_FILE = "build_report.json"


def read_build_report(repo: Path) -> dict:
    path = Path(repo) / REPORT_FILE
    if not path.is_file():
        raise ManifestError(f"{path} does not exist: is {repo} a dcam-build output?")
    return json.loads(path.read_text())
