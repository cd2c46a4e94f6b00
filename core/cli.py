"""What every dcam command line shares: defaults read from the stage's dataclass, and the one
place where library errors become a message and an exit status.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import click

from dcam.core.errors import DcamError

F = TypeVar("F", bound=Callable[..., Any])

EXISTING_FILE = click.Path(dir_okay=False, exists=True)  # certificates, keys: named if missing


def default(owner: Any, name: str) -> Any:
    """The default of a dataclass field or function parameter, so an option never restates it."""
    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if f.name == name and f.default is not dataclasses.MISSING:
                return f.default
            if f.name == name and f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    else:
        param = inspect.signature(owner).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    raise KeyError(f"{owner.__name__} has no default for {name!r}")


def reports_errors(command: F) -> F:
    """Turn a DcamError raised below a command into click's message and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DcamError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = getattr(exc, "exit_code", 1)  # e.g. 130 for an aborted run
            raise error from exc

    return wrapper  # type: ignore[return-value]
