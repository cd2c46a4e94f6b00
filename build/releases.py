"""NVIDIA Triton container releases: which TensorRT, CUDA and server each carries, and what
follows from it for a build (the FP16 route, the bounded queue, the container to build in).

A TensorRT plan loads only in the TensorRT version that built it, so a build names the release
that will serve it (`--triton-release`) and is checked against this table before anything is
built. Only facts with a source are written down; a field nobody could establish is None, and
the checks that need it refuse instead of guessing.

Sources (read 2026-12-02):
- [build.py] triton-inference-server/server `build.py`, `DEFAULT_TRITON_VERSION_MAP` at tags
  v2.51.0 to v2.71.0 and branch r26.08: server and ONNX Runtime versions per release.
- [notes] Triton release notes, docs.nvidia.com/deeplearning/triton-inference-server/
  release-notes/rel-YY-MM.html: CUDA versions; 24.10 ships TensorRT 10.5.
- [matrix] Triton's compatibility matrix (server docs/introduction/compatibility.md): TensorRT
  10.13 for 25.12.
- [trt11] server commit d55d95f ("TRT 11 compatibility across all gen_qa_*.py", 2026-06-09):
  "The 26.06 TensorRT container ships TRT 11.0.0"; TensorRT 11.0 GA is dated 2026-06-02
  (NVIDIA/TensorRT CHANGELOG.md). Releases after 26.06 are taken to stay on 11.
- [queue] triton-inference-server/core commit 8d0aaf6 (core#466, fixed in #470; server #8658):
  on release branch r26.02 and later, not on r26.01.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcam.core.errors import ConfigError

IMAGE = "nvcr.io/nvidia/tritonserver"
# The release deploy/ pins and builds default to: the first whose ONNX Runtime (1.27) supports
# TensorRT 11 ("ONNX Runtime 1.27+ supports TensorRT 11.x", NVIDIA's 10.x-to-11.x migration
# guide), so both GPU routes, plans and --onnx-accelerator tensorrt, work on it.
DEFAULT_RELEASE = "26.07"
# The embedded server in the nvidia-pytriton 0.7.0 wheel (what `dcam-serve` runs).
EMBEDDED_SERVER = "2.51.0"
SUPPORTED_TENSORRT = (10, 11)  # the major versions whose builder API dcam-build drives
# The first release whose ensembles survive a step rejecting for a full queue [queue].
QUEUE_FIX_RELEASE = "26.02"


@dataclass(frozen=True)
class Release:
    """One Triton container release (YY.MM) and what it ships."""

    name: str
    server: str | None  # Triton server version, e.g. 2.51.0 [build.py]
    tensorrt_major: int  # 10 or 11: decides the FP16 route [notes, trt11]
    tensorrt: str | None = None  # major.minor where a source states it, else None
    cuda: str | None = None  # major.minor [notes]
    onnxruntime: str | None = None  # [build.py]

    @property
    def image(self) -> str:
        """The stock image that serves a dcam GPU repository and builds its plans."""
        return f"{IMAGE}:{self.name}-py3"

    @property
    def bounded_queue(self) -> bool:
        """Whether an ensemble step may reject for a full queue without crashing the server."""
        return _key(self.name) >= _key(QUEUE_FIX_RELEASE)


def _key(name: str) -> tuple[int, int]:
    year, month = name.split(".")
    return int(year), int(month)


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("24.10", "2.51.0", 10, "10.5", "12.6", "1.19.2"),
        Release("24.11", "2.52.0", 10, None, None, "1.19.2"),
        Release("24.12", "2.53.0", 10, None, None, "1.20.1"),
        Release("25.01", "2.54.0", 10, None, None, "1.20.1"),
        Release("25.02", "2.55.0", 10, None, None, "1.20.1"),
        Release("25.03", "2.56.0", 10, None, None, "1.21.0"),
        Release("25.04", "2.57.0", 10, None, None, "1.21.0"),
        Release("25.05", "2.58.0", 10, None, None, "1.22.0"),
        Release("25.06", "2.59.0", 10, None, "12.9", "1.22.0"),
        Release("25.07", "2.59.1", 10, None, None, "1.22.0"),
        Release("25.08", "2.60.0", 10, None, None, "1.23.0"),
        Release("25.09", "2.61.0", 10, None, None, "1.23.0"),
        Release("25.10", "2.62.0", 10, None, None, "1.23.1"),
        Release("25.11", "2.63.0", 10, None, None, "1.23.2"),
        Release("25.12", "2.64.0", 10, "10.13", "13.1", "1.23.2"),
        Release("26.01", "2.65.0", 10, None, None, "1.23.2"),
        Release("26.02", "2.66.0", 10, None, "13.1", "1.24.1"),
        Release("26.03", "2.67.0", 10, None, None, "1.24.2"),
        Release("26.04", "2.68.0", 10, None, "13.2", "1.24.4"),
        Release("26.05", "2.69.0", 10, None, "13.2", "1.24.4"),
        Release("26.06", "2.70.0", 11, "11.0", "13.3", "1.24.4"),
        Release("26.07", "2.71.0", 11, None, "13.3", "1.27.0"),
        Release("26.08", "2.72.0", 11, None, "13.4", "1.28.0"),
        Release("26.10", None, 11, None, "13.4", None),
    )
}


def release(name: str) -> Release:
    """The table's row for `name`; ConfigError listing the known releases otherwise."""
    try:
        return RELEASES[name]
    except KeyError:
        raise ConfigError(
            f"unknown Triton release {name!r}; dcam knows {', '.join(RELEASES)} "
            "(build/releases.py cites where each row comes from)"
        ) from None


def require_supported_tensorrt(version: str) -> int:
    """The major version of an installed TensorRT, refusing one whose API we do not drive."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise ConfigError(f"cannot read TensorRT's version {version!r}") from None
    if major not in SUPPORTED_TENSORRT:
        raise ConfigError(
            f"TensorRT {version} is not supported: dcam-build drives TensorRT "
            f"{' and '.join(f'{m}.x' for m in SUPPORTED_TENSORRT)} (build/trt.py); build in the "
            f"serving container instead, e.g. {release(DEFAULT_RELEASE).image}"
        )
    return major


def require_matching_tensorrt(target: Release, installed: str, container: str | None) -> None:
    """Refuse to build plans that `target`'s server could not load.

    Inside an NVIDIA Triton container (`container` is its NVIDIA_TRITON_SERVER_VERSION) the
    release must be the target itself. Elsewhere the installed TensorRT must equal the release's
    to major.minor, which the table must know.
    """
    fix = f"build inside {target.image} on the GPU model that will serve"
    if container is not None:
        if container != target.name:
            raise ConfigError(
                f"this is Triton container {container}, but the plans are for {target.name}: "
                f"a plan loads only in the TensorRT that built it; {fix}"
            )
        return
    if target.tensorrt is None:
        raise ConfigError(
            f"the TensorRT version of Triton {target.name} is not in dcam's table, so TensorRT "
            f"{installed} here cannot be checked against it; {fix}"
        )
    if ".".join(installed.split(".")[:2]) != target.tensorrt:
        raise ConfigError(
            f"TensorRT {installed} here, but Triton {target.name} serves with TensorRT "
            f"{target.tensorrt}: its server would refuse these plans; {fix}"
        )
