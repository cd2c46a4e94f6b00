"""The embedded tritonserver's files and environment, checked before it starts.

The `nvidia-pytriton` wheel carries a Triton 2.51 binary, the Python backend and one backend stub
per Python version (3.8 to 3.13). The stub embeds the interpreter: it links
`libpython3.X.so.1.0`, which Debian ships in its `libpython3.X` package and pyenv or a
`--enable-shared` build ships in the interpreter's own `LIBDIR`. Debian 12 has the 3.11 package
installed, so 3.11 worked there by luck; any other interpreter found no library, every stub died
and `dcam-build verify` waited its full timeout. So we put the interpreter's LIBDIR on the stubs'
library path, and ask the dynamic loader (`ldd`) whether the stub resolves everything before the
server starts: a stub that cannot is refused at once, with the fix.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from dcam.core.errors import ServerError

PYTRITON = "nvidia-pytriton==0.7.0"  # the wheel that carries the server (see pyproject.toml)


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            f"the embedded tritonserver is not installed: pip install --no-deps '{PYTRITON}' "
            "(make setup does this)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def stub_path(version: str | None = None) -> Path:
    """The wheel's Python-backend stub for a Python version (default: this interpreter's)."""
    version = version or python_version()
    stubs = pytriton_root() / "tritonserver" / "python_backend_stubs"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted((p.name for p in stubs.iterdir() if p.is_dir()), key=_version_key)
        raise ServerError(
            f"the embedded tritonserver has no Python-backend stub for Python {version} (it has "
            f"{', '.join(have)}): create the virtualenv with one of those, e.g. "
            f"make setup PYTHON=python{have[-1]}"
        )
    return stub


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def interpreter_libdir() -> Path | None:
    """This interpreter's LIBDIR when it holds its shared libpython (pyenv, --enable-shared)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return Path(libdir)
    return None


def server_env() -> dict[str, str]:
    """The server's environment: the wheel's libraries, then the interpreter's libpython; this
    virtualenv's bin/ first on PATH, which is what makes the stubs see its site-packages."""
    env = dict(os.environ)
    libs = [pytriton_root().parent / "nvidia_pytriton.libs", interpreter_libdir()]
    paths = [str(p) for p in libs if p is not None]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*paths, env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Python-backend stubs share the cores with each other: spinning BLAS pools oversubscribe.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def unresolved_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    """The shared libraries the dynamic loader cannot find for `binary` under `env`."""
    ldd = shutil.which("ldd")
    if ldd is None:
        raise ServerError("ldd is missing (glibc's libc-bin): cannot check the Python stub")
    result = subprocess.run(
        [ldd, str(binary)], env=env, capture_output=True, text=True, check=False, timeout=30
    )
    return [
        line.split("=>")[0].strip() for line in result.stdout.splitlines() if "=> not found" in line
    ]


def check_stub_loads(stub: Path, version: str, env: dict[str, str]) -> None:
    """Refuse a stub whose libraries do not resolve, naming the fix (not a 120 s wait)."""
    missing = unresolved_libraries(stub, env)
    if not missing:
        return
    problem = (
        f"the embedded tritonserver's Python-backend stub for Python {version} cannot load "
        f"{', '.join(missing)}, so every Python model would fail to start"
    )
    if not any(name.startswith("libpython") for name in missing):
        raise ServerError(f"{problem}: install the packages that provide them")
    raise ServerError(
        f"{problem}. This interpreter ({sys.executable}) ships no shared libpython. Install "
        f"your distribution's libpython{version} package (Debian, Ubuntu: apt-get install "
        f"libpython{version}), or use a Python {version} built with --enable-shared (pyenv: "
        f"PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install {version})"
    )


def prepare_runtime(work: Path) -> Path:
    """Lay out bin/, backends/ and caches/ with this interpreter's Python stub, checked to load;
    returns work."""
    stub = stub_path()
    check_stub_loads(stub, python_version(), server_env())
    src = pytriton_root() / "tritonserver"
    shutil.copytree(
        src, work, ignore=shutil.ignore_patterns("python_backend_stubs"), dirs_exist_ok=True
    )
    shutil.copy2(stub, work / "backends" / "python" / "triton_python_backend_stub")
    return work
