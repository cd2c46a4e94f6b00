"""dcam-client as a line PC runs it, against the real tritonserver: stopped by signals mid-run, a
hot folder written by slow copies, file names that are not UTF-8, an unknown product, and
dcam-serve on every address."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dcam.client.cli import client_group
from dcam.client.files import HotFolder
from dcam.client.results import latest_rows, read_results
from dcam.core.network import interface_addresses
from dcam.serve.server import ServerConfig, TritonServer, free_port

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(ensemble_repo: Path):
    with TritonServer(ServerConfig(ensemble_repo)) as srv:
        yield srv


def _image(synthetic_root: Path) -> Path:
    return sorted(synthetic_root.glob("nut/test/good/*.png"))[0]


def _big_folder(folder: Path, synthetic_root: Path, n: int) -> Path:
    """n images (hard links of one), as a backlog on a line PC."""
    folder.mkdir()
    src = _image(synthetic_root)
    for i in range(n):
        os.link(src, folder / f"part-{i:05d}.png")
    return folder


def _score(folder: Path, url: str, out: Path, *options: str) -> subprocess.Popen:
    cmd = [str(BIN / "dcam-client"), "score", "--dir", str(folder), "--url", url]
    cmd += ["--output", str(out), "--batch-size", "4", *options]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_rows(out: Path, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.exists() and len(read_results(out)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} rows in {out} after {timeout_s} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_run_promptly_and_resume_scores_the_rest(
    signum: int, server, synthetic_root: Path, tmp_path: Path
) -> None:
    n = 3000
    folder = _big_folder(tmp_path / "backlog", synthetic_root, n)
    out = tmp_path / "scores.jsonl"
    proc = _score(folder, server.grpc_url, out)
    _wait_rows(out, 40)
    sent = time.monotonic()
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=60)
    exit_s = time.monotonic() - sent
    assert exit_s < 5, f"took {exit_s:.1f} s to stop"
    assert proc.returncode == 128 + signum, output
    first = {r["path"] for r in read_results(out)}
    assert 40 <= len(first) < n
    assert f"{n - len(first)} files left unscored" in output
    summary = tmp_path / "resume.json"
    resumed = _score(folder, server.grpc_url, out, "--resume", "--summary-json", str(summary))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert json.loads(summary.read_text())["files"] == n - len(first)  # none scored twice
    rows = read_results(out)  # compacted: one row per path
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in folder.iterdir())
    assert all(r["error"] is None for r in rows)


def test_a_second_signal_aborts_a_run_waiting_on_a_dead_server(
    ensemble_repo: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    """The server dies mid-run: the first Ctrl-C waits for requests now retrying against
    nobody; the second ends the run at once, keeping what was written."""
    folder = _big_folder(tmp_path / "backlog", synthetic_root, 1000)
    out = tmp_path / "scores.jsonl"
    ports = {f"{k}_port": free_port() for k in ("http", "grpc", "metrics")}
    srv = TritonServer(ServerConfig(ensemble_repo, **ports)).start()
    try:
        proc = _score(folder, f"127.0.0.1:{ports['grpc_port']}", out, "--retries", "20")
        _wait_rows(out, 20)
    finally:
        srv.stop()
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    assert proc.poll() is None, "the first signal should wait for the requests in flight"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 130, output
    assert "aborted by a second SIGINT" in output
    kept = read_results(out)
    assert len(kept) >= 20 and all(r["error"] is None for r in kept[:20])


def _slow_copy(src: Path, dst: Path, first: int, pause_s: float) -> None:
    """Writes as a slow network copy does: `first` bytes, a pause with the file open, the rest."""
    data = src.read_bytes()
    with dst.open("wb") as fh:
        fh.write(data[:first])
        fh.flush()
        time.sleep(pause_s)
        fh.write(data[first:])


def test_a_paused_copy_is_scored_once_complete(
    server, synthetic_root: Path, tmp_path: Path
) -> None:
    """20 kB of a PNG, a 2 s pause, then the rest: judged early (settle 0.5 s) it fails as
    truncated, then is scored again once it changed, and that row supersedes the failure."""
    src = tmp_path / "big.png"
    from PIL import Image

    Image.open(_image(synthetic_root)).resize((512, 512)).save(src)  # more than 20 kB
    assert src.stat().st_size > 40_000
    folder = tmp_path / "hot"
    folder.mkdir()
    out = tmp_path / "watch.jsonl"
    proc = _score(folder, server.grpc_url, out, "--watch", "--settle", "0.5")
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:  # the first listing is done
            time.sleep(0.1)
        _slow_copy(src, folder / "part.png", 20_000, pause_s=2.0)
        seen: list[dict] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = read_results(out)
            if seen and seen[-1]["error"] is None:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    # Judged during the pause, it failed; then it changed and was scored: two rows, in order.
    assert [r["error"] is None for r in seen] == [False, True], seen
    assert "truncated" in seen[0]["error"] or "cannot" in seen[0]["error"], seen[0]
    rows = read_results(out)  # compacted at the end: the latest row per path
    assert [(Path(r["path"]).name, r["error"]) for r in rows] == [("part.png", None)], output
    assert proc.returncode == 0, output  # the failure was superseded: nothing failed
    assert "file events" in output  # inotify here, through watchdog


def test_hot_folder_waits_for_close_or_settle_and_rewatches_failures(tmp_path: Path) -> None:
    """HotFolder alone, with a clock it is given: polling only, then with close events."""
    polling = HotFolder(tmp_path, False, "*", set(), settle_s=2.0, events=False)
    part = tmp_path / "a.png"
    part.write_bytes(b"x" * 100)
    assert polling.poll(now=0.0) == []
    assert polling.poll(now=1.0) == []
    assert polling.poll(now=2.0) == [part]  # unchanged for the settle time
    assert polling.poll(now=10.0) == []  # handed out once
    polling.done(str(part), ok=False)
    assert polling.poll(now=11.0) == []  # failed, unchanged: not again
    with part.open("ab") as fh:
        fh.write(b"y" * 100)
    os.utime(part, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert polling.poll(now=12.0) == []  # changed: settles again
    assert polling.poll(now=14.0) == [part]
    events = HotFolder(tmp_path, False, "*.png", {str(part)}, settle_s=1000.0)
    try:
        assert "file events" in events.mode
        (tmp_path / "b.png").write_bytes(b"z" * 10)  # written and closed
        with (tmp_path / "c.png").open("wb") as held:  # still open: no close event
            held.write(b"z" * 10)
            held.flush()
            time.sleep(0.3)
            assert events.poll() == [tmp_path / "b.png"]
    finally:
        events.close()


def test_a_latin1_file_name_keeps_every_output_readable(
    server, synthetic_root: Path, tmp_path: Path
) -> None:
    good = tmp_path / "line" / "good"
    good.mkdir(parents=True)
    name = os.fsdecode(b"caf\xe9 \\x41.png")  # latin-1 e-acute, and a literal backslash
    shutil.copy(_image(synthetic_root), good / name)
    shutil.copy(_image(synthetic_root), good / "plain.png")
    bad = tmp_path / "line" / "scratch"
    bad.mkdir()
    shutil.copy(_image(synthetic_root), bad / os.fsdecode(b"\xff.png"))
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"scores{suffix}"
        args = ["score", "--dir", str(tmp_path / "line"), "--recursive"]
        args += ["--url", server.grpc_url, "--output", str(out)]
        assert CliRunner().invoke(client_group, args).exit_code == 0
        out.read_bytes().decode("utf-8")  # valid UTF-8, whole
        table = pd.read_csv(out) if suffix == ".csv" else pd.read_json(out, lines=True)
        escaped = table[table["path_escaped"].astype(str) == "True"]
        names = sorted(Path(p).name for p in escaped["path"])
        assert names == ["\\xff.png", "caf\\xe9 \\\\x41.png"]
        if suffix == ".csv":
            with out.open(encoding="utf-8", newline="") as fh:
                assert len(list(csv.DictReader(fh))) == 3
        assert set(latest_rows(out)) == {str(p) for p in (tmp_path / "line").rglob("*.png")}
        again = CliRunner().invoke(client_group, [*args, "--resume"])
        assert again.exit_code == 0 and "skipped 3 already" in again.output
        auroc = CliRunner().invoke(client_group, ["auroc", str(out)])
        assert auroc.exit_code == 0 and "over 3 scored images (1 anomalous)" in auroc.output


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_unknown_product_is_the_callers_error_with_the_known_names(
    protocol: str, server, synthetic_root: Path, tmp_path: Path
) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    folder = tmp_path / "sofa" / "test" / "good"
    folder.mkdir(parents=True)
    for i, src in enumerate(sorted(synthetic_root.glob("nut/test/good/*.png"))[:3]):
        shutil.copy(src, folder / f"{i}.png")
    base = ["score", "--dir", str(tmp_path), "--recursive", "--url", url, "--protocol", protocol]
    named = CliRunner().invoke(
        client_group, [*base, "--output", str(tmp_path / "a.jsonl"), "--category", "sofa"]
    )
    assert named.exit_code == 1  # refused before any file: the model publishes its products
    assert "unknown category 'sofa'; calibrated: ['carpet', 'nut']" in named.output
    started = time.monotonic()
    out = tmp_path / "b.jsonl"
    by_path = CliRunner().invoke(
        client_group, [*base, "--output", str(out), "--category-from-path"]
    )
    assert time.monotonic() - started < 30  # permanent: not retried with back-off
    assert by_path.exit_code == 1
    rows = read_results(out)
    assert len(rows) == 3
    status = "INVALID_ARGUMENT" if protocol == "grpc" else "[400]"
    for row in rows:
        assert status in row["error"] and "calibrated: ['carpet', 'nut']" in row["error"]
        assert row["retryable"] is False


def test_serve_on_every_address_says_where_it_is_reached(ensemble_repo: Path) -> None:
    ports = [str(free_port("0.0.0.0")) for _ in range(3)]
    cmd = [str(BIN / "dcam-serve"), str(ensemble_repo), "--host", "0.0.0.0"]
    cmd += ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any(line.lstrip().startswith("metrics") for line in lines):
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)
        http = next(line for line in lines if line.lstrip().startswith("HTTP"))
        assert f"bound to 0.0.0.0:{ports[0]}" in http
        for address in interface_addresses():
            assert f"{address}:{ports[0]}" in http
            with urllib.request.urlopen(
                f"http://{address}:{ports[0]}/v2/health/ready", timeout=5
            ) as reply:
                assert reply.status == 200
        assert len(interface_addresses()) >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
