"""Errors of the client; the CLI turns them into messages and exit codes."""

from __future__ import annotations


class ClientError(Exception):
    """The client cannot go on (no server ready, wrong model, unusable output file)."""


class RetryableError(ClientError):
    """A server was unavailable, overloaded or too slow; the request may be sent again."""
