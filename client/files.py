"""Find the images to score: a folder (optionally recursive, with a glob), or new files landing
in a hot folder. Symlink loops and unreadable entries are kept as paths so they get a per-file
error in the output instead of vanishing.
"""

from __future__ import annotations

import fnmatch
import os
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


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class HotFolder:
    """New files under a folder, each reported once, after its size stopped changing.

    A file still being written changes size between two polls (or is still empty), so it is
    reported on a later poll.
    """

    def __init__(self, root: Path, recursive: bool, pattern: str, seen: set[str]) -> None:
        self.root, self.recursive, self.pattern, self.seen = root, recursive, pattern, seen
        self._sizes: dict[str, int | None] = {}

    def poll(self) -> list[Path]:
        ready = []
        for path in list_files(self.root, self.recursive, self.pattern):
            key = os.fsdecode(path)
            if key in self.seen:
                continue
            size = _size(path)
            if size and self._sizes.get(key) == size:
                self.seen.add(key)
                self._sizes.pop(key)
                ready.append(path)
            else:
                self._sizes[key] = size
        return ready


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
