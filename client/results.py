"""Typed results and their output files (CSV or JSONL by extension), written as they arrive.

Each row is flushed at once, so a crash of the client loses nothing already scored (and an fsync
at least every second bounds what an OS crash can lose). File names that are not UTF-8 survive
the round trip.

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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcam.core.errors import ConfigError, OutputExistsError
from dcam.core.files import write_atomic

FIELDS = ("path", "category", "score", "is_anomalous", "error", "retryable", "latency_ms")


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

    @property
    def ok(self) -> bool:
        return self.error is None

    def row(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}


class ResultWriter:
    """Appends results to a .csv or .jsonl file and flushes after each one."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.kind = _kind(self.path)
        exists = self.path.exists() and self.path.stat().st_size > 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # surrogateescape: non-UTF-8 file names are written back as their original bytes
        self._fh = self.path.open(
            "a" if append else "w", newline="", encoding="utf-8", errors="surrogateescape"
        )
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
    """Rows of an earlier output; a torn last line (crash mid-write) is ignored."""
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
        latest[row["path"]] = row
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
        done = {row["path"] for row in compact(path) if is_settled(row, retry_failed)}
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
    """A text view of a binary file that keeps non-UTF-8 names as their original bytes."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, text: str) -> int:
        return self._fh.write(text.encode("utf-8", errors="surrogateescape"))
