"""The station's state and questions, without the web: the run, its labels, the repository, and
what each page asks of them (summaries, queues, fits, whether an apply needs confirming).

Scores are z-scores, which a new threshold does not change (only thresholds move between
calibration versions), so any threshold's decisions follow from the scores already served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcam.core.errors import ConfigError
from dcam.core.scoring import ScoringSpec
from dcam.core.served_calibration import CalibrationRecord
from dcam.review import fit
from dcam.review.config import ReviewConfig
from dcam.review.runs import Part, Run, borderline, flagged_first, load_run
from dcam.review.store import Label, LabelStore
from dcam.review.versions import Repository

TARGETS = ("false_call_rate", "detection_rate")


@dataclass(frozen=True)
class ProductSummary:
    product: str | None
    scored: int
    flagged: int
    labels: dict[str, int]
    threshold: float | None  # the served threshold now (the repository's latest version)
    confusion: fit.Confusion | None
    synthetic_detection: float | None  # the calibration's CutPaste estimate, never mixed in


class Station:
    """One review: results merged by path, labels in SQLite, optionally the repository."""

    def __init__(self, config: ReviewConfig) -> None:
        self.config = config
        self.run: Run = load_run(config.results, config.heatmaps)
        self.repository = None if config.repository is None else Repository(config.repository)
        if self.repository is not None:
            self._check_build(self.repository, self.run)
        self.store = LabelStore(config.labels_path)
        self.parts = self.run.by_id()
        self._signature = _signature(config.results)

    def refresh(self) -> bool:
        """Read the results again when a file changed since (a line PC still scoring into it):
        its new parts show on the next page. Returns whether it read them. A file that now
        fails the checks (rows of another build) leaves the last good reading in place."""
        try:
            signature = _signature(self.config.results)
        except OSError as exc:
            raise ConfigError(f"a results file went away: {exc}") from exc
        if signature == self._signature:
            return False
        run = load_run(self.config.results, self.config.heatmaps)
        if self.repository is not None:
            self._check_build(self.repository, run)
        self.run, self.parts, self._signature = run, run.by_id(), signature
        return True

    def _check_build(self, repository: Repository, run: Run) -> None:
        """Refuse a repository of another build than the one that scored the results: its
        thresholds are on another model's z-scores."""
        builds = run.build_ids()
        if builds and builds != {repository.build_id}:
            raise ConfigError(
                f"--repository {repository.root} is build {repository.build_id}; the results "
                f"were scored by build {', '.join(sorted(builds))}: open them with the "
                "repository that scored them"
            )
        products = {p for p in run.products() if p is not None}
        unknown = sorted(products - set(repository.base.per_category))
        if unknown:
            raise ConfigError(
                f"--repository {repository.root} has no calibration for products {unknown} "
                "in the results: a repository of another build?"
            )

    # --- reading -------------------------------------------------------------------------
    def labels(self) -> dict[str, Label]:
        return self.store.current()

    def part_at(self, path: str | None) -> Part | None:
        """The part the results name `path`, if any."""
        return next((p for p in self.run.parts if p.path == path), None)

    def threshold(self, product: str | None, spec: ScoringSpec | None = None) -> float | None:
        """The served threshold now: the latest calibration version's (None without a
        repository: the results alone only bound it, `served_boundary`)."""
        if self.repository is None:
            return None
        spec = spec if spec is not None else self.repository.spec()
        return spec.calibration_for(product).threshold

    def served_boundary(self, product: str | None) -> tuple[float, float] | None:
        """Between which scores the served decisions of these results switch (the highest
        passed, the lowest flagged): what the results alone say of the threshold."""
        parts = self.run.of_product(product)
        passed = [p.score for p in parts if not p.flagged]
        flagged = [p.score for p in parts if p.flagged]
        if not passed or not flagged:
            return None
        return max(passed), min(flagged)

    def fit_parts(
        self, product: str | None, labels: dict[str, Label] | None = None
    ) -> list[fit.Part]:
        """The product's parts as fits see them: score, verdict, served decision."""
        labels = self.labels() if labels is None else labels
        return [
            fit.Part(p.score, _verdict(labels.get(p.path)), p.flagged)
            for p in self.run.of_product(product)
        ]

    def summaries(self) -> list[ProductSummary]:
        """One row per product; the labels and the served record are read once."""
        counts, labels = self.store.counts(), self.labels()
        spec = self.repository.spec() if self.repository is not None else None
        synthetic = self.synthetic()
        rows = []
        for product in self.run.products():
            parts = self.fit_parts(product, labels)
            threshold = self.threshold(product, spec)
            rows.append(
                ProductSummary(
                    product=product,
                    scored=len(parts),
                    flagged=sum(p.flagged for p in parts),
                    labels=counts.get(product, {}),
                    threshold=threshold,
                    confusion=None
                    if threshold is None
                    else fit.confusion(parts, threshold, self.config.presume_passed_good),
                    synthetic_detection=synthetic.get(product),
                )
            )
        return rows

    def synthetic(self) -> dict[str | None, float]:
        """Each product's detection rate on the calibration's synthetic anomalies (training's
        CutPaste estimate, from the repository's manifest)."""
        if self.repository is None:
            return {}
        metrics = self.repository.manifest.data.get("metrics", {})
        return dict((metrics.get("synthetic_anomalies") or {}).get("per_category") or {})

    def queue(self, product: str | None) -> list[Part]:
        """What to label, in order: flagged parts (highest first), then the passed parts
        nearest the threshold."""
        parts = self.run.of_product(product)
        return flagged_first(parts) + borderline(parts, self.config.borderline)

    def next_in_queue(self, product: str | None, after: str) -> Part | None:
        """The next unlabelled part of the queue after `after` (wrapping), else None."""
        queue, labels = self.queue(product), self.labels()
        ids = [p.id for p in queue]
        start = ids.index(after) + 1 if after in ids else 0
        for part in queue[start:] + queue[:start]:
            if part.path not in labels and part.id != after:
                return part
        return None

    # --- fitting and applying ------------------------------------------------------------
    def fit(self, product: str | None, target: str, rate: float) -> fit.ThresholdFit:
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, got {target!r}")
        method = (
            fit.threshold_for_false_call_rate
            if target == "false_call_rate"
            else fit.threshold_for_detection_rate
        )
        return method(
            self.fit_parts(product), rate, self.config.confidence, self.config.presume_passed_good
        )

    def apply_concerns(
        self, product: str | None, threshold: float, stated: float | None = None
    ) -> list[str]:
        """Why applying `threshold` should be confirmed: it lowers the served threshold (so it
        can only add false calls) and the labels show a false-call rate above the stated one at
        it, or too few goods back any rate, or flagged parts above it are still unlabelled.
        `stated` defaults to the station's --false-call-rate."""
        current = self.threshold(product)
        if current is not None and threshold >= current:
            return []  # no part is called that is not called now
        stated = self.config.false_call_rate if stated is None else stated
        parts = self.fit_parts(product)
        matrix = fit.confusion(parts, threshold, self.config.presume_passed_good)
        goods = matrix.fp + matrix.tn
        name = product or "the global calibration"
        if goods == 0:
            return [f"no good part of {name} is labelled: nothing bounds its false calls"]
        concerns = []
        if matrix.fp / goods > stated:
            concerns.append(
                f"the labels show {matrix.fp} false calls of {goods} goods "
                f"({matrix.fp / goods:.1%}) at {threshold:.3f}, above the stated {stated:.1%}"
            )
        needed = fit.min_goods_for(stated, self.config.confidence)
        if goods < needed:
            concerns.append(
                f"{goods} goods back it; {needed} are needed before zero false calls would "
                f"show a rate under {stated:.1%} at {self.config.confidence:.0%} confidence"
            )
        if matrix.unlabelled_flagged:
            concerns.append(
                f"{matrix.unlabelled_flagged} flagged parts above it are unlabelled: each may "
                "be a false call"
            )
        return concerns

    def apply(
        self,
        thresholds: dict[str | None, float],
        operator: str,
        target: dict[str, Any] | None = None,
    ) -> CalibrationRecord:
        """Write the thresholds as a new calibration version, recording the labels behind it."""
        if self.repository is None:
            raise ConfigError("open the station with --repository to apply a calibration")
        source = {
            **(target or {}),  # what the fit aimed at, and the concerns confirmed
            "thresholds": {("global" if k is None else k): v for k, v in thresholds.items()},
            "labels": str(self.config.labels_path),
            "labels_digest": self.store.digest(),
            "label_counts": {str(k): v for k, v in self.store.counts().items()},
            "results": [str(p) for p in self.run.files],
            "presume_passed_good": self.config.presume_passed_good,
        }
        return self.repository.apply(thresholds, operator, source)


def _signature(files) -> tuple:
    """What tells a results file changed: its size and modification time."""
    stats = [Path(f).stat() for f in files]
    return tuple((s.st_size, s.st_mtime_ns) for s in stats)


def _verdict(label: Label | None) -> str | None:
    """A stored label as the fit reads it: skip is no verdict."""
    if label is None or label.label == "skip":
        return None
    return label.label
