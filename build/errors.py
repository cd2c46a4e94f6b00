"""Errors of the build stage; the CLI turns them into messages and exit codes."""

from __future__ import annotations

from dcam.training.errors import DcamError


class BuildError(DcamError):
    """A build step failed; the message names the step, the file and what to do."""
