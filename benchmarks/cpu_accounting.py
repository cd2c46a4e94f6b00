"""CPU seconds of the processes a benchmark runs, read from the kernel's own counters.

Each process's utime + stime (fields 14 and 15 of /proc/<pid>/stat, in clock ticks): all its
threads, also those that have ended. A server's processes are tritonserver and its descendants
(the Python-backend stubs), found through /proc/<pid>/task/*/children. Linux only; psutil is not
a dependency.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
SELF = "bench process"  # this process: the client, or the in-process pipeline


def cpu_seconds(pid: int | str = "self") -> float | None:
    """utime + stime of `pid` in seconds; None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name in brackets may hold spaces: count from the last ")". After it come field 3
    # (state) onwards, so fields 14 and 15 (man 5 proc) sit at indexes 11 and 12.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def children(pid: int) -> list[int]:
    """The direct children of `pid` (of any of its threads)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            continue  # the thread ended between the listing and the read
    return found


def descendants(pid: int) -> list[int]:
    """Children, grandchildren and so on of `pid`, parents before children."""
    out, todo = [], children(pid)
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo += children(child)
    return out


def server_processes(label: str, pid: int) -> dict[str, int]:
    """`<label> tritonserver` for a tritonserver process `pid`, and `<label> stub <model>` for
    each of its descendants (the Python-backend stubs, one per model instance)."""
    # Imported here: soak imports throughput, which imports this module.
    from soak import stub_model

    tree = {f"{label} tritonserver": pid}
    for child in descendants(pid):
        name = f"{label} stub {stub_model(child)}"
        tree[name if name not in tree else f"{name} {child}"] = child
    return tree


class CpuCounters:
    """Snapshots of the CPU seconds of this process and of the servers given by their pids.

    The process list is read once, so make it once the servers are ready (Triton starts each
    model's stub while loading it); a process that ends later keeps its last value.
    """

    def __init__(self, servers: dict[str, int]) -> None:
        self.pids: dict[str, int | str] = {SELF: "self"}
        for label, pid in servers.items():
            self.pids |= server_processes(label, pid)
        self.last: dict[str, float] = {}

    def __call__(self) -> dict[str, float]:
        for name, pid in self.pids.items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                self.last[name] = seconds
        return dict(self.last)


def per_image(deltas: list[dict[str, float]], images: list[int]) -> dict[str, float]:
    """Median over rounds of each process's CPU seconds per image, plus their sum (`total`)."""
    rows = [{k: v / n for k, v in d.items()} for d, n in zip(deltas, images, strict=True)]
    for row in rows:
        row["total"] = sum(row.values())
    return {k: statistics.median(row[k] for row in rows) for k in rows[0]} if rows else {}


def cpu_rows(cpu: dict[str, dict[str, float]], rates: dict[str, float]) -> list[str]:
    """Markdown: CPU ms per image of each process (rows) under each configuration (columns),
    their total, the wall-clock rate and the cores kept busy (total CPU per image x rate)."""
    configs = list(cpu)
    rows = [
        "| CPU ms per image | " + " | ".join(configs) + " |",
        "|---" * (len(configs) + 1) + "|",
    ]
    for proc in cpu[configs[0]]:
        cells = " | ".join(f"{1000 * cpu[c].get(proc, 0.0):.1f}" for c in configs)
        rows.append(f"| {'**total**' if proc == 'total' else proc} | {cells} |")
    rows.append("| images/s (wall) | " + " | ".join(f"{rates[c]:.1f}" for c in configs) + " |")
    busy = " | ".join(f"{cpu[c]['total'] * rates[c]:.2f}" for c in configs)
    rows.append(f"| cores busy | {busy} |")
    return rows
