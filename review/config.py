"""The review station's settings, one dataclass; `dcam-review open`'s flags map onto it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dcam.core.errors import ConfigError
from dcam.core.network import is_loopback

TOKEN_ENV = "DCAM_REVIEW_TOKEN"


@dataclass(frozen=True)
class ReviewConfig:
    """Where the results, heatmaps, labels and repository are; how the station listens."""

    results: tuple[Path, ...]
    heatmaps: tuple[Path, ...] = ()
    repository: Path | None = None  # without it: labels and fits, no apply
    labels: Path | None = None  # default: <first results file>.labels.sqlite beside it
    host: str = "127.0.0.1"  # loopback; any other interface needs a token
    port: int = 8765
    token: str | None = field(default=None, repr=False)  # or $DCAM_REVIEW_TOKEN
    borderline: int = 24  # passed parts nearest the threshold shown per product
    confidence: float = 0.95  # of the bounds on false-call and detection rates
    false_call_rate: float = 0.05  # the stated rate: fits aim at it, applies above it confirm
    presume_passed_good: bool = True  # unlabelled passed parts count as good in fits
    server: str | None = None  # gRPC URL of the Triton serving the repository: apply waits for it
    api_key: str | None = field(default=None, repr=False)  # its control APIs' key, if it has one
    take_up_s: float = 60.0  # how long an apply waits for the server to serve the new version

    def __post_init__(self) -> None:
        if not self.results:
            raise ConfigError("name at least one results file")
        if not 0 < self.false_call_rate < 1:
            raise ConfigError(f"--false-call-rate must be in (0, 1), got {self.false_call_rate}")
        if not 0.5 < self.confidence < 1:
            raise ConfigError(f"--confidence must be in (0.5, 1), got {self.confidence}")
        if self.borderline < 0:
            raise ConfigError("--borderline must be 0 or more")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("--token must be at least 16 characters")
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"--host {self.host} is reachable from other machines: give a token "
                f"(--token or ${TOKEN_ENV}, 16 characters or more), as dcam-serve asks for "
                "an API key"
            )

    @property
    def labels_path(self) -> Path:
        """The SQLite file beside the (first) results file, unless named."""
        if self.labels is not None:
            return Path(self.labels)
        first = Path(self.results[0])
        return first.with_name(first.stem + ".labels.sqlite")

    @staticmethod
    def token_from_env() -> str | None:
        return os.environ.get(TOKEN_ENV) or None
