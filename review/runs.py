"""What the station reviews: the scored parts of one or many results files, merged by path, with
each part's image and heatmap found on disk, checked against the model repository.

Results come from `dcam-client score` (JSONL or CSV, read with the client's own reader). Several
files (one per line PC, or several runs) are merged by path: a later file's row of the same path
supersedes an earlier one, as a resumed run's does. Rows that failed to score have nothing to
judge and are counted, not shown. Heatmaps mirror the scored folder's layout under each
`--heatmaps` folder (client/heatmap.py `heatmap_path`); the folder that was scored is not in the
results, so a part's heatmap is the first of its path's tails found there (`a/b/c.png`, then
`b/c.png`, then `c.png`). What is missing (images on another PC, heatmaps not written) is
counted and said on every page; a review goes on without them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dcam.client.results import escape_path, has_error, is_true, read_results, row_path
from dcam.core.errors import ConfigError


@dataclass(frozen=True)
class Part:
    """One scored part as the station shows it."""

    id: str  # stable across restarts: a digest of the path (URLs carry it, not the path)
    path: str  # as the results write it (valid UTF-8, client/results.py); labels are keyed by it
    product: str | None
    score: float
    flagged: bool
    calibration: str | None  # "<build id>/<version>" that decided it, where the server said
    image: Path | None  # None: not on this machine
    heatmap: Path | None  # None: not found under any heatmap folder
    source: str  # the results file it came from


@dataclass
class Run:
    """The merged parts and what could not be shown, for the banner every page carries."""

    parts: list[Part]
    files: list[Path]
    failed_rows: int = 0
    superseded_rows: int = 0
    missing_images: list[str] = field(default_factory=list)
    missing_heatmaps: list[str] = field(default_factory=list)

    def by_id(self) -> dict[str, Part]:
        return {p.id: p for p in self.parts}

    def products(self) -> list[str | None]:
        return sorted({p.product for p in self.parts}, key=lambda c: (c is None, c or ""))

    def of_product(self, product: str | None) -> list[Part]:
        return [p for p in self.parts if p.product == product]

    def build_ids(self) -> set[str]:
        """The builds whose calibrations decided these parts (rows naming one)."""
        return {p.calibration.split("/", 1)[0] for p in self.parts if p.calibration}


def part_id(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


def find_heatmap(path: str, folders: Sequence[Path]) -> Path | None:
    """The first of the path's tails, as .png, under the first heatmap folder that has it."""
    parts = Path(path).with_suffix(".png").parts
    tails = [Path(*parts[i:]) for i in range(len(parts)) if ".." not in parts[i:]]
    for folder in folders:
        for tail in tails:
            if tail.is_absolute():
                continue
            candidate = Path(folder) / tail
            if candidate.is_file():
                return candidate
    return None


def _part(row: dict, source: Path, heatmaps: Sequence[Path]) -> Part:
    name = row_path(row)  # the file's own name, which may not be UTF-8
    on_disk, text = Path(name), escape_path(name)[0]  # `text`: valid UTF-8, as rows write it
    score = float(row["score"])
    if not math.isfinite(score):
        raise ValueError(f"score {row['score']!r}")
    return Part(
        id=part_id(text),
        path=text,
        product=row.get("category") or None,
        score=score,
        flagged=is_true(row.get("is_anomalous")),
        calibration=row.get("calibration") or None,
        image=on_disk if on_disk.is_file() else None,
        heatmap=find_heatmap(str(on_disk), heatmaps),
        source=str(source),
    )


def _unshared(parts: list[Part]) -> list[Part]:
    """Drop heatmaps two parts would share: a short tail (just `000.png`) matched a file of
    another part, and showing it would put the wrong evidence before the operator."""
    seen = Counter(p.heatmap for p in parts if p.heatmap is not None)
    return [
        dataclasses.replace(p, heatmap=None) if p.heatmap and seen[p.heatmap] > 1 else p
        for p in parts
    ]


def load_run(files: Sequence[Path], heatmaps: Sequence[Path]) -> Run:
    """Parts of the results `files`, merged by path (later files win), with their images and
    heatmaps. Raises ConfigError for a missing or empty results file or heatmap folder."""
    if not files:
        raise ConfigError("name at least one results file (.jsonl or .csv from dcam-client score)")
    for folder in heatmaps:
        if not Path(folder).is_dir():
            raise ConfigError(f"--heatmaps {folder}: no such folder")
    merged: dict[str, Part] = {}
    run = Run(parts=[], files=[Path(f) for f in files])
    for source in run.files:
        if not source.is_file():
            raise ConfigError(f"{source}: no such results file")
        rows = read_results(source)
        if not rows:
            raise ConfigError(f"{source}: no result rows (is it a dcam-client output?)")
        for row in rows:
            if "path" not in row or "score" not in row:
                raise ConfigError(f"{source}: rows lack path and score: not a dcam-client output")
            if has_error(row) or row.get("score") in (None, ""):
                run.failed_rows += 1
                continue
            try:
                part = _part(row, source, heatmaps)
            except ValueError:  # a score that is no finite number: nothing to judge
                run.failed_rows += 1
                continue
            run.superseded_rows += part.path in merged
            merged[part.path] = part
    run.parts = _unshared(list(merged.values()))
    run.missing_images = [p.path for p in run.parts if p.image is None]
    run.missing_heatmaps = [p.path for p in run.parts if p.heatmap is None]
    if not run.parts:
        raise ConfigError(f"{', '.join(map(str, files))}: every row failed to score")
    return run


def flagged_first(parts: Sequence[Part]) -> list[Part]:
    """Flagged parts, highest score first: what the line rejected."""
    return sorted((p for p in parts if p.flagged), key=lambda p: -p.score)


def borderline(parts: Sequence[Part], count: int) -> list[Part]:
    """The `count` passed parts with the highest scores: nearest the threshold, the likeliest
    escapes."""
    return sorted((p for p in parts if not p.flagged), key=lambda p: -p.score)[:count]
