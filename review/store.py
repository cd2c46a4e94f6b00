"""The labels of one review, in one SQLite file beside the results (stdlib `sqlite3` only).

Reads and writes the file the caller names (the station's default: `<results stem>.labels.sqlite`
beside the first results file). Every label is committed the moment it is given; the table is
append-only, so a later label of a part supersedes the earlier one, which stays in the history.
WAL mode and a 10 s busy timeout let several threads and processes label at once without losing
each other's labels. Each call opens and closes its own connection, and SQLite folds the WAL
back into the file when the last connection closes: the file alone is whole whenever no call
is running (copy it then, or with `sqlite3 FILE .backup COPY`). WAL needs a local disk, not a
network share.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import threading
import time
import typing
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from dcam.core.errors import ConfigError, DcamError, InputError
from dcam.review.fit import LABELS

SCHEMA_VERSION = 1  # PRAGMA user_version of a dcam label store
BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another's lock before failing
_SCHEMA = (
    f"""CREATE TABLE labels (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL,
        product TEXT,
        label TEXT NOT NULL CHECK (label IN {LABELS!r}),
        operator TEXT NOT NULL,
        labelled_at TEXT NOT NULL
    )""",
    "CREATE INDEX labels_by_path ON labels (path, id)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",  # in the same transaction: all or nothing
)
_COLUMNS = "path, product, label, operator, labelled_at, id"
# The latest label of each part by id: ids follow commit order, clocks of two hosts need not.
_CURRENT = f"SELECT {_COLUMNS} FROM labels WHERE id IN (SELECT MAX(id) FROM labels GROUP BY path)"


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL (persistent), so readers never block the writer.

    SQLite answers "locked" at once, without the busy handler, when two connections change the
    journal mode together (as two processes opening a new file do), hence the retries.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@dataclass(frozen=True)
class Label:
    """One row of the label history."""

    path: str  # the part's image path, as the results name it
    product: str | None
    label: str  # one of LABELS
    operator: str
    labelled_at: str  # UTC ISO-8601 with microseconds
    id: int  # commit order: the higher id supersedes


class LabelStore:
    """Append-only label history in one SQLite file, safe from many threads and processes.

    Each call opens its own short-lived connection, so Starlette's threadpool can share one
    store and no connection ever crosses threads; SQLite's own locking orders the writers.
    """

    def __init__(self, path: Path) -> None:
        """Open the store at `path`, creating its schema when the file is new or empty.

        Raises:
            ConfigError: the parent folder is missing, or the file is not a dcam label store.
        """
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"label store folder {self.path.parent} does not exist; create it")
        self._closed = threading.Event()
        try:
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            notadb = getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB"
            if notadb or "not a database" in str(exc):
                raise ConfigError(f"{self.path} is not a dcam label store ({exc})") from exc
            raise ConfigError(f"cannot open label store {self.path}: {exc}") from exc

    def _init_schema(self) -> None:
        """Create the schema once, even when two processes open a new file together."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # a second opener waits here, then sees the schema
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
                if version == 0 and not tables:
                    for statement in _SCHEMA:  # not executescript: it would commit first
                        db.execute(statement)
                    version, tables = SCHEMA_VERSION, {"labels"}
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.rollback()
            if version == SCHEMA_VERSION and "labels" in tables:
                _use_wal(db)
                return
        raise ConfigError(
            f"{self.path} is not a dcam label store (schema version {version}, "
            f"expected {SCHEMA_VERSION} with a labels table); pick another file"
        )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection, closed on exit; transactions are explicit."""
        if self._closed.is_set():
            raise DcamError(f"label store {self.path} is closed")
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        with closing(db):
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            yield db

    def _select(self, sql: str, params: tuple[object, ...] = ()) -> list[Label]:
        with self._connect() as db:
            return [Label(*row) for row in db.execute(sql, params)]

    def add(self, path: str, label: str, operator: str, product: str | None) -> Label:
        """Append and commit one label at once; returns the stored row.

        Raises:
            InputError: an unknown label, a blank operator or path, or a blank product.
        """
        if label not in LABELS:
            raise InputError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
        operator = operator.strip()
        if not operator:
            raise InputError("operator must be named: a label without one cannot be audited")
        if not path:
            raise InputError("part path must not be empty")
        if product is not None and not product.strip():
            raise InputError("product must be None or a non-blank name")
        stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self._connect() as db:
            # Autocommit: the INSERT is its own transaction, durable when execute returns.
            cursor = db.execute(
                "INSERT INTO labels (path, product, label, operator, labelled_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (path, product, label, operator, stamp),
            )
            row = db.execute(
                f"SELECT {_COLUMNS} FROM labels WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
        return Label(*row)

    def current(self) -> dict[str, Label]:
        """The latest label of each part (a "skip" included), by part path."""
        return {lab.path: lab for lab in self._select(_CURRENT + " ORDER BY path")}

    def history(self, path: str | None = None) -> list[Label]:
        """Every label given, oldest first; only those of `path` when given."""
        if path is None:
            return self._select(f"SELECT {_COLUMNS} FROM labels ORDER BY id")
        return self._select(f"SELECT {_COLUMNS} FROM labels WHERE path = ? ORDER BY id", (path,))

    def counts(self) -> dict[str | None, dict[str, int]]:
        """Current labels per product, every label kind present (zero when none)."""
        out: dict[str | None, dict[str, int]] = {}
        for lab in self.current().values():
            out.setdefault(lab.product, dict.fromkeys(LABELS, 0))[lab.label] += 1
        return out

    def digest(self) -> str:
        """sha256 hex of the current (path, label) pairs: names the label set a fit came from."""
        pairs = sorted((lab.path, lab.label) for lab in self.current().values())
        text = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def export_csv(self, fh: typing.TextIO) -> int:
        """Write the current labels sorted by path as CSV; returns the rows written."""
        names = [f.name for f in fields(Label) if f.name != "id"]
        writer = csv.writer(fh)
        writer.writerow(names)
        rows = sorted(self.current().values(), key=lambda lab: lab.path)
        for lab in rows:
            writer.writerow([_cell(v) for v in astuple(lab)[: len(names)]])
        return len(rows)

    def close(self) -> None:
        """Fold the WAL back into the file, then refuse further calls."""
        if not self._closed.is_set():
            with self._connect() as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._closed.set()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a leading =, +, - or @ would make it a formula
    (OWASP, "CSV Injection"), so such text gets a leading apostrophe."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value
