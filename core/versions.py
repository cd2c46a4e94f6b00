"""Version stamps for manifests, build reports and benchmark results, written once.

Read from the installed distributions' metadata, so stamping needs no import of torch or
ONNX Runtime.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def package_versions(*names: str) -> dict[str, str]:
    """Python's version and each named distribution's ('not installed' where absent)."""
    stamped = {"python": platform.python_version()}
    for name in names:
        try:
            stamped[name] = version(name)
        except PackageNotFoundError:
            stamped[name] = "not installed"
    return stamped
