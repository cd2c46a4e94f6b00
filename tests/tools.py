"""What the tests of deploy/, TLS and the alert rules share: the command-line tools they run
(kubectl, promtool, checkov, node, openssl), present or the test skips here saying how to get it
(under CI, CI=true, their absence fails, so a check that cannot run never passes silently); promtool
itself; and throwaway certificates."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require_that(present: bool, reason: str) -> None:
    """Skip when `present` is false; fail instead under CI, where every check must run."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)")
    pytest.skip(reason)


def require(tool: str, how: str) -> str:
    """The tool's path; skips (fails under CI) when it is missing, saying `how` to get it."""
    path = shutil.which(tool)
    require_that(path is not None, f"{tool} is needed: {how}")
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)


def certificates(folder: Path, san: str, subjects: dict[str, str]) -> Path:
    """A throwaway CA (ca.pem) in `folder`, and for each `name: CN` in `subjects` a key and a
    certificate it signed (name.key, name.pem) with the subjectAltName `san`."""
    require("openssl", "the openssl command line makes the test certificates")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=ca")
    (folder / "san.ext").write_text(f"subjectAltName={san}\n")
    for name, common_name in subjects.items():
        run(
            "req",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={common_name}",
        )
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext",
        )  # fmt: skip
    return folder
