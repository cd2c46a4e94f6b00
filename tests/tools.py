"""The command-line tools the deploy/ checks run (kubectl, promtool, checkov, node): present, or
the test skips here with how to get it; under CI (CI=true) their absence is a failure, so a
check that cannot run never passes silently."""

from __future__ import annotations

import os
import shutil

import pytest


def require(tool: str, how: str) -> str:
    """The tool's path; skips (fails under CI) when it is missing, saying `how` to get it."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is needed: {how}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
