"""Stale Python-backend shared memory: find the regions no live process holds, and remove them.

Triton's Python backend keeps each model instance's tensors in a POSIX shared-memory region
(`/dev/shm/triton_python_backend_shm_region_*`). A server stopped cleanly unlinks its regions;
one killed hard (SIGKILL, out of memory, power loss) leaves them behind, and on a line that
restarts for weeks each leftover is RAM that never comes back. A region is stale when no
live process maps it or holds it open: a starting server holds the descriptor from `shm_open`
until it maps the region, so one being created is never taken for stale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SHM_DIR = Path("/dev/shm")
REGION_PREFIX = "triton_python_backend_shm_region_"


@dataclass(frozen=True)
class Freed:
    """What a sweep removed: regions, and the RAM their pages held."""

    regions: int = 0
    bytes: int = 0

    def describe(self) -> str:
        return f"{self.regions} stale shared-memory regions ({self.bytes / 2**20:.1f} MiB)"


# Processes that map these regions: the server and its Python-backend stubs.
_TRITON_PROCESSES = ("tritonserver", "triton_python_")  # comm is cut at 15 characters


def _is_triton(pid: Path) -> bool:
    try:
        return (pid / "comm").read_text().strip().startswith(_TRITON_PROCESSES)
    except OSError:
        return False


def _held_paths(proc: Path = Path("/proc")) -> set[str] | None:
    """Every file a live process maps or holds open; None when a Triton process can't be read.

    Processes this user may not inspect (a container's init, other users' work) are skipped
    unless they are Triton's own, which could be mapping a region: then nothing is judged.
    """
    held: set[str] = set()
    for pid in proc.iterdir():
        if not pid.name.isdigit():
            continue
        try:
            for line in (pid / "maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6:
                    held.add(fields[5].removesuffix(" (deleted)"))
            for fd in (pid / "fd").iterdir():
                try:
                    held.add(os.readlink(fd))
                except OSError:  # closed while we looked
                    continue
        except FileNotFoundError:  # the process ended
            continue
        except OSError:
            if pid.exists() and _is_triton(pid):  # alive, Triton's, unreadable: cannot judge
                return None
    return held


def remove_stale_regions(shm_dir: Path = SHM_DIR, prefix: str = REGION_PREFIX) -> Freed:
    """Unlink this user's regions that no live process maps or holds open.

    Other users' regions are left alone: /dev/shm is sticky, and their processes' maps cannot
    be read, so whether they are in use cannot be known from here.
    """
    if not shm_dir.is_dir():
        return Freed()
    held = _held_paths()
    if held is None:
        return Freed()
    regions = size = 0
    for path in shm_dir.glob(f"{prefix}*"):
        try:
            info = path.stat()
            if info.st_uid != os.getuid() or str(path) in held:
                continue
            path.unlink()
        except FileNotFoundError:  # its owner removed it meanwhile
            continue
        regions += 1
        size += info.st_blocks * 512  # pages actually held in RAM, not the nominal size
    return Freed(regions, size)
