"""Stale Python-backend shared memory: what a sweep removes and what it must leave."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dcam.serve.server import free_port
from dcam.serve.shm import REGION_PREFIX, SHM_DIR, remove_stale_regions

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm (Linux)")

HOLD = """
import mmap, sys
with open(sys.argv[1], "r+b") as fh:
    region = mmap.mmap(fh.fileno(), 0)
    print("mapped", flush=True)
    sys.stdin.read()  # hold the mapping until the test closes stdin
"""


def _region(prefix: str, name: str, size: int) -> Path:
    path = SHM_DIR / f"{prefix}{name}"
    path.write_bytes(os.urandom(size))  # real pages, as a backend's tensors would be
    return path


def test_sweep_removes_unheld_regions_and_keeps_mapped_ones() -> None:
    prefix = f"dcam_test_region_{uuid.uuid4().hex}_"
    stale = _region(prefix, "stale", 1 << 20)
    mapped = _region(prefix, "mapped", 1 << 16)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(mapped)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "mapped"
        freed = remove_stale_regions(prefix=prefix)
        assert not stale.exists() and mapped.exists()
        assert freed.regions == 1 and freed.bytes >= 1 << 20
        assert freed.describe() == "1 stale shared-memory regions (1.0 MiB)"
    finally:
        holder.communicate("")
        mapped.unlink(missing_ok=True)
        stale.unlink(missing_ok=True)
    # Once the holder is gone, a region is stale like any other; a second sweep finds nothing.
    again = _region(prefix, "again", 4096)
    assert remove_stale_regions(prefix=prefix).regions == 1 and not again.exists()
    assert remove_stale_regions(prefix=prefix).regions == 0


def test_dcam_serve_frees_what_a_hard_kill_left_and_says_so(ensemble_repo: Path) -> None:
    """A region no process holds, named as Triton names them: dcam-serve removes it at start."""
    left = _region(REGION_PREFIX, str(uuid.uuid4()), 1 << 20)
    ports = [str(free_port()) for _ in range(3)]
    cmd = [str(Path(sys.executable).parent / "dcam-serve"), str(ensemble_repo)]
    cmd += ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        assert not left.exists()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        left.unlink(missing_ok=True)
    output = "".join(lines) + rest
    assert re.search(r"freed \d+ stale shared-memory regions \([\d.]+ MiB\) left by", output)
    assert proc.returncode == 0 and "tritonserver stopped" in output
