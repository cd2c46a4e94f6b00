"""The embedded server's runtime: the stub for this Python resolves its libraries, and a stub that
cannot is refused at once with the fix (the real stubs from the wheel, the real dynamic loader)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcam.core.errors import ServerError
from dcam.serve import runtime
from dcam.serve.server import ServerConfig, TritonServer

REPO_ROOT = Path(__file__).resolve().parents[1]


def wheel_only_env() -> dict[str, str]:
    """The loader's view with only the wheel's own libraries: no interpreter LIBDIR."""
    libs = runtime.pytriton_root().parent / "nvidia_pytriton.libs"
    return {"PATH": os.environ.get("PATH", ""), "LD_LIBRARY_PATH": str(libs)}


def stub_without_libpython() -> tuple[str, Path]:
    """A stub of another Python whose libpython this machine's loader cannot find."""
    stubs = runtime.pytriton_root() / "tritonserver" / "python_backend_stubs"
    for folder in sorted(stubs.iterdir()):
        stub = folder / "triton_python_backend_stub"
        missing = runtime.unresolved_libraries(stub, wheel_only_env())
        if folder.name != runtime.python_version() and any("libpython" in m for m in missing):
            return folder.name, stub
    pytest.skip("every Python's libpython resolves on this machine")


def test_this_pythons_stub_resolves_every_library() -> None:
    stub = runtime.stub_path()
    assert runtime.unresolved_libraries(stub, runtime.server_env()) == []
    runtime.check_stub_loads(stub, runtime.python_version(), runtime.server_env())


def test_the_interpreters_libdir_follows_the_wheels_libraries() -> None:
    libdir = runtime.interpreter_libdir()
    if libdir is None:
        pytest.skip("this interpreter ships no shared libpython (the distribution's package does)")
    paths = runtime.server_env()["LD_LIBRARY_PATH"].split(os.pathsep)
    assert paths.index(str(libdir)) == 1, paths  # after nvidia_pytriton.libs, before the rest


def test_a_stub_without_its_libpython_is_refused_with_the_fix() -> None:
    version, stub = stub_without_libpython()
    with pytest.raises(ServerError) as err:
        runtime.check_stub_loads(stub, version, wheel_only_env())
    message = str(err.value)
    assert f"libpython{version}.so" in message
    assert f"apt-get install libpython{version}" in message
    assert "--enable-shared" in message


def test_a_python_without_a_stub_names_those_there_are() -> None:
    with pytest.raises(ServerError, match=r"no Python-backend stub for Python 3\.99 .*3\.13"):
        runtime.stub_path("3.99")


def test_the_server_refuses_in_seconds_not_at_its_ready_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As on Python 3.12 without its libpython: before, every stub died and start() waited its
    full ready timeout (120 s). The interpreter's identity is the one thing substituted: the stub
    and the loader are real."""
    version, _ = stub_without_libpython()
    monkeypatch.setattr(runtime, "python_version", lambda: version)
    monkeypatch.setattr(runtime, "interpreter_libdir", lambda: None)
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    (tmp_path / "repo").mkdir()
    started = time.monotonic()
    with pytest.raises(ServerError, match=f"libpython{version}"):
        TritonServer(ServerConfig(tmp_path / "repo", ready_timeout_s=120)).start()
    assert time.monotonic() - started < 10


def run_check(python: str, venv: Path) -> subprocess.CompletedProcess:
    script = REPO_ROOT / ".ci" / "python-check.sh"
    return subprocess.run(
        ["bash", str(script), python, str(venv)], capture_output=True, text=True, timeout=60
    )


def test_python_check_accepts_this_interpreter_and_refuses_another_venvs(tmp_path: Path) -> None:
    ok = run_check(sys.executable, tmp_path / "none")
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).name.startswith("python")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"  # a "venv" whose python is 3.9 says so
    fake.write_text("#!/bin/sh\necho 3.9\n")
    fake.chmod(0o755)
    clash = run_check(sys.executable, venv)
    assert clash.returncode == 1
    assert "was made with Python 3.9" in clash.stderr


def test_python_check_stops_at_once_on_an_unsupported_or_missing_interpreter(
    tmp_path: Path,
) -> None:
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho 3.9\n")
    fake.chmod(0o755)
    old = run_check(str(fake), tmp_path / "none")
    assert old.returncode == 1
    assert "is Python 3.9; the project runs on Python 3.10 to 3.13" in old.stderr
    missing = run_check(str(tmp_path / "python-nowhere"), tmp_path / "none")
    assert missing.returncode == 1
    assert "does not run here" in missing.stderr
