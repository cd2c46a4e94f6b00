"""System shared memory for a client on the server's host: images written once into /dev/shm
instead of serialised into every request.

A region is a POSIX shared-memory object (what shm_open makes, a file under /dev/shm), mapped
here and registered with Triton under its key ("/name"); the request then names the region and
the byte count instead of carrying the bytes (Triton's system shared memory extension,
docs/protocol/extension_shared_memory.md). A request holds one region from its write until its
response, so there are as many regions as requests in flight. Each region's file stays open
with a shared lock while its client lives: a region whose file nobody locks (or that is gone)
belonged to a client that died, and the next client removes it. Locks, not pids, because
clients in containers sharing /dev/shm see each other's pids wrongly or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import re
import secrets
from pathlib import Path

import numpy as np

from dcam.core.errors import ClientError

SHM_DIR = Path("/dev/shm")
PREFIX = "dcam-client"
_NAME = re.compile(rf"^{PREFIX}-\d+-[0-9a-f]+-\d+$")  # pid, random token, index


class Region:
    """One shared-memory object of `size` bytes: created here, its memory reserved (so a full
    /dev/shm fails now with ENOSPC instead of killing the client with SIGBUS on a later write),
    mapped, locked while this client lives, and unlinked on close."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        path = SHM_DIR / name
        self._fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.posix_fallocate(self._fd, 0, size)
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            self._map = mmap.mmap(self._fd, size)
        except OSError:
            os.close(self._fd)
            path.unlink(missing_ok=True)
            raise

    @property
    def key(self) -> str:
        """The shm_open name Triton opens."""
        return f"/{self.name}"

    def write(self, array: np.ndarray) -> int:
        """Copy `array`'s bytes to the start of the region; returns the byte count."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if data.nbytes > self.size:
            raise ClientError(f"{data.nbytes} bytes do not fit region {self.name} ({self.size})")
        np.frombuffer(self._map, np.uint8, data.nbytes)[:] = data
        return data.nbytes

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        (SHM_DIR / self.name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.close(self._fd)


def is_stale(name: str) -> bool:
    """A region name of this client's kind whose client is gone: its file is missing, or
    nobody holds the lock every live client keeps on its regions."""
    if not _NAME.match(name):
        return False
    try:
        fd = os.open(SHM_DIR / name, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live client holds it
    finally:
        os.close(fd)
    return True


def remove_stale_files() -> list[str]:
    """Unlink /dev/shm objects left by dcam clients that died; returns their names."""
    removed = []
    for path in SHM_DIR.glob(f"{PREFIX}-*"):
        if path.exists() and is_stale(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


class RegionPool:
    """`count` regions of `size` bytes each; `hold()` lends one to a request until it answers."""

    def __init__(self, count: int, size: int) -> None:
        remove_stale_files()
        self.regions: list[Region] = []
        token = secrets.token_hex(4)
        try:
            for i in range(count):
                self.regions.append(Region(f"{PREFIX}-{os.getpid()}-{token}-{i}", size))
        except OSError as exc:
            self.close()
            raise ClientError(f"cannot create shared memory in {SHM_DIR}: {exc}") from exc
        self._free: asyncio.Queue[Region] = asyncio.Queue()
        for region in self.regions:
            self._free.put_nowait(region)

    @contextlib.asynccontextmanager
    async def hold(self):
        region = await self._free.get()
        try:
            yield region
        finally:
            self._free.put_nowait(region)

    def close(self) -> None:
        for region in self.regions:
            region.close()
