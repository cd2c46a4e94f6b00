"""Make `dcam` importable from this source tree where it is not installed.

The GPU machine receives a copy of the working tree and no install step. `dcam` is a namespace
package whose subpackages live in the top-level folders that pyproject.toml's package-dir maps,
so a temporary folder with a `dcam/` of links to those folders is all an import needs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, str]:
    """pyproject.toml's package-dir: subpackage ("dcam.core") -> folder ("core")."""
    import tomllib  # Python 3.11+, as on every machine the benchmarks run on

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return table["tool"]["setuptools"]["package-dir"]


def ensure_dcam_importable() -> str:
    """Returns "installed" or the folder put on sys.path."""
    try:
        import dcam.core  # noqa: F401

        return "installed"
    except ImportError:
        pass
    site = Path(tempfile.mkdtemp(prefix="dcam-source-"))
    (site / "dcam").mkdir()
    for package, folder in package_dirs().items():
        link = site / "dcam" / package.split(".", 1)[1]
        link.symlink_to(ROOT / folder, target_is_directory=True)
    sys.path.insert(0, str(site))
    return str(site)
