"""The one error family every dcam library module raises; only the CLIs turn it into messages.

Each subclass names the stage or kind of failure so callers can catch what they can handle
(the client retries `RetryableError`, nothing else). Classes that replace a former bare
`ValueError` also derive from it, so callers catching `ValueError` keep working.
"""

from __future__ import annotations


class DcamError(Exception):
    """A failure the user can act on; the message says what went wrong and how to fix it."""


class ConfigError(DcamError, ValueError):
    """An option or combination of options that cannot work (unknown choice, bad range)."""


class InputError(DcamError, ValueError):
    """Arrays handed to the maths or the metrics have the wrong shape, kind or content."""


class ManifestError(DcamError):
    """A manifest or build report is missing, malformed or of an unsupported version."""


class ImageError(DcamError):
    """An image file that cannot be decoded; the message names the file and the reason."""


class OutputExistsError(DcamError):
    """An output would overwrite earlier results; the message names --force / --resume."""


class BuildError(DcamError):
    """A build step failed; the message names the step, the file and what to do."""


class ServerError(DcamError):
    """tritonserver could not start, or a model failed to load; carries the server's own log."""


class ClientError(DcamError):
    """The client cannot go on (no server ready, wrong model, unusable output file)."""


class RetryableError(ClientError):
    """A server was unavailable, overloaded or too slow; the request may be sent again."""


class Aborted(ClientError):
    """A run cancelled at once by a second SIGINT/SIGTERM; what was written stays."""

    exit_code = 130  # as a shell reports a process ended by SIGINT
