"""Find the images to score: a folder (optionally recursive, with a glob), or new files landing
in a hot folder. Symlink loops and unreadable entries are kept as paths so they get a per-file
error in the output instead of vanishing.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from pathlib import Path

from dcam.core.errors import ClientError
from dcam.core.images import IMAGE_SUFFIXES


def _matches(path: Path, root: Path, pattern: str) -> bool:
    rel = os.fsdecode(path.relative_to(root))
    return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(path.name, pattern)


def list_files(
    root: Path, recursive: bool = False, pattern: str = "*", skipped: list[Path] | None = None
) -> list[Path]:
    """Candidate image files under root, sorted; symlinked folders are not followed (no loops).

    Folders named like images (`x.png/`) are not inputs; they are added to `skipped`, if given,
    so the caller can report them rather than drop them silently.
    """
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in files + dirs:
            path = Path(folder) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES or not _matches(path, root, pattern):
                continue
            if name in files or path.is_symlink():
                found.append(path)
            elif skipped is not None:
                skipped.append(path)
        if not recursive:
            break
    return sorted(found)


Signature = tuple[int, int]  # (size, mtime in ns): what changes while a file is written


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class HotFolder:
    """New files under a folder, each handed out once it looks complete.

    Complete means closed after writing, where the operating system says so (inotify, through
    the `watchdog` package; a file renamed into the folder counts too), or else unchanged in size
    and mtime for `settle_s` (polling: network shares deliver no events). A writer that pauses
    longer than that with the file open fools the second rule, so a file whose result failed
    (`done(path, ok=False)`) stays watched: when its size or mtime changes it is handed out
    again, and its new row supersedes the failure.
    """

    def __init__(
        self,
        root: Path,
        recursive: bool,
        pattern: str,
        seen: set[str],
        settle_s: float = 2.0,
        events: bool = True,
    ) -> None:
        self.root, self.recursive, self.pattern, self.seen = root, recursive, pattern, seen
        self.settle_s = settle_s
        self._pending: dict[str, tuple[Signature, float]] = {}  # changing: (signature, since)
        self._given: dict[str, Signature] = {}  # handed out, result not yet back
        self._failed: dict[str, Signature] = {}  # failed: handed out again once changed
        self._closed = ClosedFiles(root, recursive) if events else None
        self.mode = (
            self._closed.mode if self._closed else "polling (events off)"
        ) + f", settle {settle_s:g} s"

    def poll(self, now: float | None = None) -> list[Path]:
        now = time.monotonic() if now is None else now
        closed = self._closed.take() if self._closed else set()
        ready = []
        for path in list_files(self.root, self.recursive, self.pattern):
            key = os.fsdecode(path)
            sig = _signature(path)
            if key in self.seen:
                if key not in self._failed or sig in (None, self._failed[key]):
                    continue
                del self._failed[key]  # changed since it failed: judge it again
                self.seen.discard(key)
            if sig is None or sig[0] == 0:  # gone, unreadable or still empty
                self._pending.pop(key, None)
                continue
            before, since = self._pending.get(key, (None, now))
            if before != sig:
                since = now  # changed since the last poll: settling starts again
            if key in closed or now - since >= self.settle_s:
                self._pending.pop(key, None)
                self.seen.add(key)
                self._given[key] = sig
                ready.append(path)
            else:
                self._pending[key] = (sig, since)
        return ready

    def done(self, path: str, ok: bool) -> None:
        """A handed-out file's result came back; a failed one is watched for a change."""
        sig = self._given.pop(path, None)
        if not ok and sig is not None:
            self._failed[path] = sig

    def close(self) -> None:
        if self._closed is not None:
            self._closed.stop()


class ClosedFiles:
    """Paths the OS reported closed after writing, or renamed into the folder, since the last
    `take()`; from watchdog's observer thread. Without it (not installed, no inotify, out of
    watches) `mode` says why and the hot folder polls alone."""

    def __init__(self, root: Path, recursive: bool) -> None:
        self._paths: set[str] = set()
        self._lock = threading.Lock()
        self._observer = None
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            self.mode = "polling (no watchdog package)"
            return
        closed = self

        class Handler(FileSystemEventHandler):
            def on_closed(self, event) -> None:
                closed._add(event.src_path)

            def on_moved(self, event) -> None:
                closed._add(event.dest_path)

        try:
            observer = Observer()
            observer.schedule(Handler(), os.fsdecode(root), recursive=recursive)
            observer.start()
        except OSError as exc:  # e.g. inotify watch or instance limits
            self.mode = f"polling (no file events: {exc})"
            return
        self._observer = observer
        self.mode = f"file events ({type(observer).__name__}) and polling"

    def _add(self, path) -> None:
        with self._lock:
            self._paths.add(os.fsdecode(path))

    def take(self) -> set[str]:
        with self._lock:
            paths, self._paths = self._paths, set()
        return paths

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)


SPLIT_FOLDERS = ("train", "test")  # MVTec AD: <category>/{train,test}/<good|defect>/<file>


def category_from_path(path: Path, root: Path) -> str:
    """The product an image belongs to, from where it lies under `root`.

    The folder before `train`/`test` (MVTec AD `<category>/test/<defect>/<file>`; `root` itself
    when it is the category folder), else the first folder below `root`. Raises ClientError
    for an image directly in `root`, whose product the path does not tell.
    """
    parts = Path(os.fsdecode(path)).relative_to(root).parts[:-1]
    for i, part in enumerate(parts):
        if part in SPLIT_FOLDERS:
            return parts[i - 1] if i > 0 else Path(root).resolve().name
    if parts:
        return parts[0]
    raise ClientError(
        f"{path}: cannot tell its product from the path (it lies directly in {root}); "
        "use --category NAME or a <category>/... folder layout"
    )
