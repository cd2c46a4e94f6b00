"""Atomic file writes, written once: a crash never leaves half a file where a whole one was."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write` on a temporary file beside `path`, fsync it, then rename it over `path`.

    The file gets the permissions a plain `open` would give it (0666 less the umask), not
    mkstemp's owner-only 0600: weights and reports are meant to be read by others.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Indented JSON with a final newline, written atomically."""
    text = json.dumps(payload, indent=2) + "\n"
    return write_atomic(path, lambda fh: fh.write(text.encode()))
