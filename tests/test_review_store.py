"""dcam.review.store: labels in real SQLite files, kept across reopening, and not lost when
threads and processes label at once."""

from __future__ import annotations

import csv
import io
import multiprocessing
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from dcam.core.errors import ConfigError, DcamError, InputError
from dcam.review.store import Label, LabelStore


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    return LabelStore(tmp_path / "labels.sqlite")


def _label_many(path: str, operator: str, count: int, barrier: Any) -> None:
    """A second process's operator: opens the same (maybe new) file as the other, at once."""
    barrier.wait()
    store = LabelStore(Path(path))
    for i in range(count):
        store.add(f"{operator}/{i:04d}.png", "good" if i % 2 else "defect", operator, "bolt")
    store.close()


def test_add_returns_the_stored_row(store: LabelStore) -> None:
    row = store.add("a/001.png", "defect", "  ana ", "bolt")
    assert (row.path, row.product, row.label, row.operator, row.id) == (
        "a/001.png",
        "bolt",
        "defect",
        "ana",
        1,
    )
    stamp = datetime.fromisoformat(row.labelled_at)
    assert stamp.tzinfo == timezone.utc
    assert row.labelled_at.endswith("+00:00") and len(row.labelled_at.split(".")[1]) == 12
    assert store.history() == [row]


def test_later_label_supersedes_and_history_keeps_both(store: LabelStore) -> None:
    first = store.add("a.png", "good", "ana", "bolt")
    store.add("b.png", "skip", "ana", None)
    second = store.add("a.png", "defect", "ben", "bolt")
    assert store.current() == {"a.png": second, "b.png": store.history("b.png")[0]}
    assert store.history("a.png") == [first, second]
    assert [lab.id for lab in store.history()] == [1, 2, 3]
    assert store.history("missing.png") == []
    assert store.counts() == {
        "bolt": {"defect": 1, "good": 0, "skip": 0},
        None: {"defect": 0, "good": 0, "skip": 1},
    }


def test_labels_persist_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    first = LabelStore(path)
    rows = [first.add(f"{i}.png", "good", "ana", "nut") for i in range(5)]
    other = LabelStore(path)  # open beside the first: every label is already committed
    assert other.history() == rows
    first.close()
    assert LabelStore(path).current() == {r.path: r for r in rows}


def test_two_processes_lose_no_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"  # both processes create it: the schema race too
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_label_many, args=(str(path), name, 200, barrier))
        for name in ("ana", "ben")
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    history = LabelStore(path).history()
    assert len(history) == 400 and len({lab.id for lab in history}) == 400
    assert {lab.operator for lab in history} == {"ana", "ben"}
    assert len(LabelStore(path).current()) == 400


def test_threads_sharing_one_store_lose_no_labels(store: LabelStore) -> None:
    def label(i: int) -> Label:
        return store.add(f"{i % 50}.png", ("defect", "good", "skip")[i % 3], f"op{i % 8}", "bolt")

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(label, range(400)))
    history = store.history()
    assert len(history) == 400 and sorted(history, key=lambda lab: lab.id) == history
    assert {r.id for r in rows} == {lab.id for lab in history}
    current = store.current()
    assert len(current) == 50
    for path, lab in current.items():  # the latest of each part is the one with the highest id
        assert lab.id == max(r.id for r in rows if r.path == path)


def test_export_csv_reads_back(store: LabelStore) -> None:
    store.add("b.png", "good", "ana", "bolt")
    store.add("a,1.png", "defect", "ben", None)  # a comma in a path survives quoting
    store.add("b.png", "skip", "ana", "bolt")
    out = io.StringIO()
    assert store.export_csv(out) == 2
    out.seek(0)
    reader = csv.DictReader(out)
    assert reader.fieldnames == ["path", "product", "label", "operator", "labelled_at"]
    rows = list(reader)
    assert [(r["path"], r["product"], r["label"]) for r in rows] == [
        ("a,1.png", "", "defect"),
        ("b.png", "bolt", "skip"),
    ]
    assert rows[1]["labelled_at"] == store.current()["b.png"].labelled_at


def test_digest_names_the_current_label_set(tmp_path: Path) -> None:
    one, two = LabelStore(tmp_path / "1.sqlite"), LabelStore(tmp_path / "2.sqlite")
    one.add("a.png", "good", "ana", None)
    one.add("b.png", "defect", "ana", None)
    two.add("b.png", "defect", "ben", "bolt")  # order, operator and product do not count
    two.add("a.png", "skip", "ben", "bolt")
    assert one.digest() != two.digest()
    before = two.digest()
    two.add("a.png", "good", "ben", "bolt")
    assert one.digest() == two.digest() != before
    assert len(one.digest()) == 64


def test_bad_labels_raise(store: LabelStore) -> None:
    with pytest.raises(InputError, match="unknown label"):
        store.add("a.png", "maybe", "ana", None)
    with pytest.raises(InputError, match="operator"):
        store.add("a.png", "good", "   ", None)
    with pytest.raises(InputError):
        store.add("", "good", "ana", None)
    assert store.history() == []


def test_not_a_store_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "results.csv"
    junk.write_text("path,score\n" * 200)
    with pytest.raises(ConfigError, match=r"results\.csv"):
        LabelStore(junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE things (x)")
    with pytest.raises(ConfigError, match=r"other\.sqlite"):
        LabelStore(other)
    newer = tmp_path / "newer.sqlite"
    LabelStore(newer)
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(ConfigError, match="version 2"):
        LabelStore(newer)


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    path.touch()
    LabelStore(path).add("a.png", "good", "ana", None)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_missing_parent_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        LabelStore(tmp_path / "nowhere" / "labels.sqlite")
    assert not (tmp_path / "nowhere").exists()


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    with LabelStore(tmp_path / "labels.sqlite") as store:
        store.add("a.png", "good", "ana", None)
    with pytest.raises(DcamError, match="closed"):
        store.current()
