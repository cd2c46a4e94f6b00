r"""Typed results and their output files (CSV or JSONL by extension), written as they arrive.

Each row is flushed at once, so a crash of the client loses nothing already scored (and an fsync
at least every second bounds what an OS crash can lose). Every file written is valid UTF-8, so
Python's csv module and pandas read it whole: a file name that is not UTF-8 (latin-1 from an old
camera share) is written with each such byte as `\xNN` and a backslash as `\\`, and the
`path_escaped` column marks that row; reading turns it back into the name on disk.

`--resume` reads the file back and skips what is settled: scored files, and files whose error
is permanent (cannot decode, too large) unless `--retry-failed`. Files whose error was
transient (the server was away or overloaded past the retries) are scored again. New rows are
appended, a later row superseding an earlier one of the same path, and at the end the file is
rewritten atomically with each path once, its latest row, in first-seen order.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcam.core.errors import ConfigError, OutputExistsError
from dcam.core.files import write_atomic

FIELDS = (
    "path",
    "category",
    "score",
    "is_anomalous",
    "error",
    "retryable",
    "latency_ms",
    "path_escaped",  # true: `path` holds \xNN escapes for bytes that are not UTF-8
    # `<build_id>/<version>` of the served calibration that decided it; empty where the model
    # answers no version (built before calibration versions). Last: older files lack it.
    "calibration",
)
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # os.fsdecode's surrogateescape for such bytes
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def escape_path(path: str) -> tuple[str, bool]:
    """A file name (as os.fsdecode gives it) as valid UTF-8 text, losslessly; and whether it
    needed escaping. Names that are UTF-8 come back unchanged."""
    if not _UNDECODABLE.search(path):
        return path, False
    text = path.replace("\\", "\\\\")
    return _UNDECODABLE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text), True


def unescape_path(text: str) -> str:
    """The inverse of `escape_path` for a row marked `path_escaped`."""

    def one(m: re.Match) -> str:
        code = m.group(1)
        return "\\" if code == "\\" else chr(0xDC00 + int(code[1:], 16))

    return _ESCAPE.sub(one, text)


def _readable(text: str | None) -> str | None:
    """Free text (an error naming a path, a category from a folder) as valid UTF-8."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def row_path(row: dict) -> str:
    """The file a row is about, as os.fsdecode names it on disk."""
    return unescape_path(row["path"]) if is_true(row.get("path_escaped")) else row["path"]


@dataclass
class Result:
    path: str
    category: str | None = None  # the product whose calibration scored it; None: global
    score: float | None = None
    is_anomalous: bool | None = None
    error: str | None = None
    retryable: bool | None = None  # for errors: transient (transport, overload), worth a retry
    latency_ms: float | None = None
    anomaly_map: np.ndarray | None = None
    calibration: str | None = None  # `<build_id>/<version>` that decided it, where answered

    @property
    def ok(self) -> bool:
        return self.error is None

    def row(self) -> dict:
        """The output row: valid UTF-8 throughout (see escape_path)."""
        path, escaped = escape_path(self.path)
        row = {k: getattr(self, k) for k in FIELDS if k != "path_escaped"}
        row.update(path=path, path_escaped=escaped)
        row.update(category=_readable(self.category), error=_readable(self.error))
        return row


class ResultWriter:
    """Appends results to a .csv or .jsonl file and flushes after each one."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.kind = _kind(self.path)
        exists = self.path.exists() and self.path.stat().st_size > 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # strict: rows are escaped text (Result.row); anything else is a bug, not a bad file
        self._fh = self.path.open("a" if append else "w", newline="", encoding="utf-8")
        if append and exists and not _ends_with_newline(self.path):
            self._fh.write("\n")  # a crash tore the last row; start a fresh line
        self._csv = csv.DictWriter(self._fh, FIELDS) if self.kind == "csv" else None
        self._synced = time.monotonic()
        if self._csv is not None and not (append and exists):
            self._csv.writeheader()

    def write(self, result: Result) -> None:
        if self._csv is not None:
            self._csv.writerow(result.row())
        else:
            self._fh.write(json.dumps(result.row()) + "\n")
        self._fh.flush()  # a crash of this process loses nothing already written
        if time.monotonic() - self._synced > 1.0:  # bound what an OS crash can lose
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"output {path}: use a .csv or .jsonl file name")
    return suffix[1:]


def read_results(path: Path) -> list[dict]:
    """Rows of an earlier output; a torn last line (crash mid-write) is ignored. Files written
    before names were escaped hold raw bytes: read with surrogateescape, escaped by latest_rows."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        if _kind(path) == "csv":
            return list(csv.DictReader(fh))
        rows = []
        for line in fh:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


def latest_rows(path: Path) -> dict[str, dict]:
    """Each path's latest row (a later row supersedes an earlier one), in first-seen order."""
    latest: dict[str, dict] = {}
    for row in read_results(path):
        name = row_path(row)
        path_text, escaped = escape_path(name)  # rows of older files held raw bytes
        latest[name] = {**row, "path": path_text, "path_escaped": escaped}
    return latest


def is_true(value) -> bool:
    """A boolean cell read back: JSON true, or CSV's "True"."""
    return str(value).lower() == "true"


def has_error(row: dict) -> bool:
    return row.get("error") not in (None, "")


def is_settled(row: dict, retry_failed: bool = False) -> bool:
    """Whether --resume leaves this row's file alone.

    Scored: settled. Failed transiently: scored again. Failed permanently: settled unless
    `retry_failed`. Rows written before errors were classified (no `retryable` field) count as
    transient when inference failed, the only error a server outage produced.
    """
    if not has_error(row):
        return True
    if retry_failed:
        return False
    retryable = row.get("retryable")
    if retryable in (None, ""):
        return not str(row["error"]).startswith("inference failed")
    return not is_true(retryable)


def open_results(
    path: Path, resume: bool, force: bool, retry_failed: bool = False
) -> tuple[ResultWriter, set[str]]:
    """The output writer and, for resume, the settled paths to skip; never overwrites silently.

    Raises:
        OutputExistsError: the file has results and neither resume nor force was asked for.
    """
    path = Path(path)
    _kind(path)
    exists = path.exists() and path.stat().st_size > 0
    if exists and not (resume or force):
        raise OutputExistsError(f"{path} exists; pass --resume to continue it or --force")
    done: set[str] = set()
    if resume and exists:
        # One row per path, today's columns: appending cannot misalign a CSV.
        done = {row_path(row) for row in compact(path) if is_settled(row, retry_failed)}
    return ResultWriter(path, append=resume), done


def compact(path: Path) -> list[dict]:
    """Rewrite `path` atomically with each path once (its latest row); return those rows."""
    path = Path(path)
    rows = list(latest_rows(path).values())

    def write(fh) -> None:
        text = _Text(fh)
        if _kind(path) == "csv":
            writer = csv.DictWriter(text, FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                text.write(json.dumps(row) + "\n")

    write_atomic(path, write)
    return rows


class _Text:
    """A UTF-8 text view of a binary file (write_atomic gives a binary one)."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, text: str) -> int:
        return self._fh.write(text.encode("utf-8"))
