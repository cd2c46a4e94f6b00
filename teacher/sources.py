"""Load the frozen teacher from its source: torchvision's ImageNet weights, a shipped
formula-pretrained teacher, a local checkpoint, or random init for offline tests; and resolve
`auto` (ImageNet where cached or downloadable, the shipped formula teacher otherwise).

Reads torch's hub cache, the shipped weights (shipped.py) or a checkpoint; writes only what
torchvision's download puts into its cache.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch

from dcam.core.errors import DcamError
from dcam.nets.features import (
    FeatureExtractor,
    imagenet_weights,
    load_backbone_weights,
    read_state_dict,
)
from dcam.teacher.config import TEACHER_SOURCES
from dcam.teacher.shipped import SHIPPED_TEACHERS, shipped_weights_path

# `auto` waits at most this long to learn whether the weights' host is reachable: offline, a
# DNS lookup alone can take far longer, and a first run should not hang on it.
AUTO_PROBE_SECONDS = 3.0


class TeacherChoice(NamedTuple):
    """The source a teacher is loaded from, and why (`auto` only; None when asked for)."""

    source: str
    reason: str | None = None


def choose_source(backbone: str, source: str) -> TeacherChoice:
    """Resolve `auto` to imagenet or formula, saying why in one printed line; others as given."""
    if source != "auto":
        return TeacherChoice(source)
    choice = _choose_auto(backbone)
    print(f"teacher: {choice.source} ({choice.reason})", flush=True)
    return choice


def _choose_auto(backbone: str) -> TeacherChoice:
    weights = imagenet_weights(backbone)
    cached = imagenet_cache_path(backbone)
    if cached.is_file():
        return TeacherChoice("imagenet", f"torchvision's ImageNet weights are cached at {cached}")
    host = urlparse(weights.url).hostname or ""
    problem = _unreachable(host)
    if problem:
        return TeacherChoice(
            "formula",
            f"ImageNet weights are not cached at {cached} and {host} is unreachable ({problem}); "
            "the shipped formula teacher needs no download",
        )
    try:
        imagenet_state_dict(backbone)  # downloads into the cache load_teacher then reads
    except DcamError as exc:
        return TeacherChoice(
            "formula", f"downloading ImageNet weights failed ({exc.__cause__ or exc})"
        )
    return TeacherChoice("imagenet", f"downloaded torchvision's ImageNet weights to {cached}")


def imagenet_cache_path(backbone: str) -> Path:
    """Where torchvision keeps `backbone`'s ImageNet weights once downloaded (torch hub)."""
    name = Path(urlparse(imagenet_weights(backbone).url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _unreachable(host: str, port: int = 443) -> str | None:
    """Why `host` cannot be connected to within AUTO_PROBE_SECONDS, or None when it can.

    A thread bounds the DNS lookup too, which `create_connection`'s timeout does not cover.
    """
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=AUTO_PROBE_SECONDS).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{exc.__class__.__name__}: {exc}")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(AUTO_PROBE_SECONDS)
    return outcome[0] if outcome else f"no answer within {AUTO_PROBE_SECONDS:.0f} s"


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights from its cache, or downloaded where the user is online."""
    weights = imagenet_weights(backbone)
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # urllib raises several kinds when offline
        raise DcamError(
            f"could not load ImageNet weights for {backbone} ({exc.__class__.__name__}: {exc}). "
            "Offline, use the shipped license-clean teacher: --teacher formula (or --teacher "
            "auto, which picks it when ImageNet weights are unavailable). Or pass "
            f"--teacher-weights PATH (a torchvision checkpoint), or put {weights.url} into "
            f"torch's hub cache ({torch.hub.get_dir()}/checkpoints). For tests only: "
            "--teacher random"
        ) from exc


def shipped_state_dict(source: str, backbone: str) -> dict[str, torch.Tensor]:
    """A shipped formula-pretrained stem + layers 1-3, stored in FP16 and returned in FP32."""
    if backbone not in SHIPPED_TEACHERS[source]:
        raise DcamError(
            f"no shipped {source} teacher for {backbone}; shipped: "
            f"{sorted(SHIPPED_TEACHERS[source])}. Train one with `dcam-teacher pretrain "
            f"--backbone {backbone}` and pass its teacher.pt as --teacher-weights"
        )
    path = shipped_weights_path(source, backbone)
    if not path.is_file():
        raise DcamError(
            f"the shipped {source} teacher {path} is missing from this installation; reinstall "
            "dcam, or train one with `dcam-teacher pretrain` and pass its teacher.pt as "
            "--teacher-weights"
        )
    state = read_state_dict(path)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_teacher(backbone: str, source: str, weights_path: Path | None = None) -> FeatureExtractor:
    """Build the frozen teacher; never falls back to random weights on its own.

    `auto` is resolved here when the caller has not (choose_source) already.
    """
    teacher = FeatureExtractor(backbone)
    if weights_path is None and source == "auto":
        source = choose_source(backbone, source).source
    if weights_path is not None:
        state = read_state_dict(weights_path)
    elif source == "imagenet":
        state = imagenet_state_dict(backbone)
    elif source in SHIPPED_TEACHERS:
        state = shipped_state_dict(source, backbone)
    elif source == "random":
        state = None
    else:
        raise DcamError(f"unknown teacher source {source!r}; choose one of {TEACHER_SOURCES}")
    if state is not None:
        load_backbone_weights(teacher, state, str(weights_path or source))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
