"""System shared memory for a client on the server's host: images written once into /dev/shm
instead of serialised into every request.

A region is a POSIX shared-memory object (what shm_open makes, a file under /dev/shm), mapped
here and registered with Triton under its key ("/name"); the request then names the region and
the byte count instead of carrying the bytes (Triton's system shared memory extension,
docs/protocol/extension_shared_memory.md). A request holds one region from its write until its
response, so there are as many regions as requests in flight. Names carry this process's pid:
regions of a client that died are found and removed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import re
from pathlib import Path

import numpy as np

from dcam.core.errors import ClientError

SHM_DIR = Path("/dev/shm")
PREFIX = "dcam-client"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-\d+$")


class Region:
    """One shared-memory object of `size` bytes, created here, mapped, and unlinked on close."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        fd = os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_stale(name: str) -> bool:
    """A region name of this client's kind whose process is gone."""
    match = _NAME.match(name)
    return bool(match) and not pid_alive(int(match.group(1)))


def remove_stale_files() -> list[str]:
    """Unlink /dev/shm objects left by dcam clients that died; returns their names."""
    removed = []
    for path in SHM_DIR.glob(f"{PREFIX}-*"):
        if is_stale(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


class RegionPool:
    """`count` regions of `size` bytes each; `hold()` lends one to a request until it answers."""

    def __init__(self, count: int, size: int) -> None:
        remove_stale_files()
        self.regions: list[Region] = []
        try:
            for i in range(count):
                self.regions.append(Region(f"{PREFIX}-{os.getpid()}-{i}", size))
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
