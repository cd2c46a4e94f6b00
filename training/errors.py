"""The one error type library code raises; the CLI layer turns it into a message and exit code."""

from __future__ import annotations


class DcamError(Exception):
    """A failure the user can act on; the message says what went wrong and how to fix it."""
