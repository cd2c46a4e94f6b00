"""Thresholds fitted from operators' labels: reads scored parts with their verdicts, returns
per-product thresholds with the counts and binomial bounds that back them, and ROC curves.

Pure numpy/scipy, no I/O. The served decision is `score > threshold` (strict, as
`dcam.core.calibration.decide`), so every count here uses the same strict comparison.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from dcam.core.errors import ConfigError, InputError

LABELS = ("defect", "good", "skip")  # skip = looked at, no verdict: counts as unlabelled
_EPS = 1e-9  # keeps floor(0.29 * 100) at 29 where binary floating point gives 28.999...


@dataclass(frozen=True)
class Part:
    """One scored part as the review station sees it."""

    score: float  # the served z-score
    label: str | None  # "defect", "good", or None (unlabelled or skipped); "skip" is accepted
    flagged: bool  # the served decision when it was scored

    def __post_init__(self) -> None:
        if self.label is not None and self.label not in LABELS:
            raise InputError(f"unknown label {self.label!r}; expected one of {LABELS} or None")
        if not math.isfinite(self.score):
            raise InputError(f"part score must be finite, got {self.score!r}")


@dataclass(frozen=True)
class Confusion:
    """Counts at one threshold; goods include presumed goods (so fp + tn == goods of a fit)."""

    tp: int
    fp: int
    tn: int
    fn: int
    presumed_good: int  # unlabelled, passed when served, counted as good (in fp or tn)
    unlabelled_flagged: int  # other unlabelled parts above the threshold: never counted


@dataclass(frozen=True)
class ThresholdFit:
    """A fitted threshold with what backs it, ready to show to people and to apply."""

    target: str  # "false_call_rate" or "detection_rate"
    target_rate: float
    threshold: float | None  # None when there is nothing to fit from
    goods: int  # labelled + presumed
    presumed_good: int
    defects: int  # labelled defects
    false_calls: int  # goods with score > threshold
    detections: int  # defects with score > threshold
    false_call_rate: float | None
    detection_rate: float | None
    bound: float | None  # upper bound of the false-call rate, or lower bound of the detection rate
    confidence: float
    enough: bool  # False when too few labels to back the target at this confidence
    note: str


@dataclass(frozen=True)
class Roc:
    """ROC points under `score > thresholds[i]`, from (0, 0) to (1, 1)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # descending; the last is -inf (everything flagged)
    auc: float
    goods: int
    defects: int


def _verdict(part: Part) -> str | None:
    """ "defect", "good" or None: a skip is no verdict."""
    return None if part.label == "skip" else part.label


def _check_rate(rate: float, confidence: float) -> None:
    """Rates and confidences outside the open intervals make the bounds meaningless."""
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"rate must be in (0, 1), got {rate!r}")
    if not 0.5 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0.5, 1), got {confidence!r}")


def _presumed(part: Part, presume_passed_good: bool) -> bool:
    """Unlabelled and passed by the line: good unless someone said otherwise."""
    return presume_passed_good and _verdict(part) is None and not part.flagged


def good_scores(parts: Iterable[Part], presume_passed_good: bool) -> np.ndarray:
    """Labelled goods plus, if asked, unlabelled parts the line passed (presumed good)."""
    return np.array(
        [p.score for p in parts if _verdict(p) == "good" or _presumed(p, presume_passed_good)],
        dtype=np.float64,
    )


def defect_scores(parts: Iterable[Part]) -> np.ndarray:
    """Labelled defects only: a defect is never presumed."""
    return np.array([p.score for p in parts if _verdict(p) == "defect"], dtype=np.float64)


def confusion(
    parts: Iterable[Part], threshold: float, presume_passed_good: bool = True
) -> Confusion:
    """Counts at `threshold`, defect positive; flagged-but-unlabelled parts are never counted."""
    tp = fp = tn = fn = presumed = unlabelled_flagged = 0
    for p in parts:
        above = p.score > threshold
        verdict = _verdict(p)
        if verdict == "defect":
            tp, fn = tp + above, fn + (not above)
        elif verdict == "good" or _presumed(p, presume_passed_good):
            fp, tn = fp + above, tn + (not above)
            presumed += verdict is None
        else:
            unlabelled_flagged += above
    return Confusion(tp, fp, tn, fn, presumed, unlabelled_flagged)


def _check_counts(k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise InputError(f"need 0 <= k <= n, got k={k}, n={n}")


def binomial_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen k times in n; 1.0 when n == 0."""
    _check_rate(0.5, confidence)
    _check_counts(k, n)
    if k == n:  # covers n == 0: nothing seen bounds nothing
        return 1.0
    from scipy import stats  # deferred: importing the store needs only LABELS

    return float(stats.beta.ppf(confidence, k + 1, n - k))


def binomial_lower(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound of a rate seen k times in n; 0.0 when n == 0."""
    _check_rate(0.5, confidence)
    _check_counts(k, n)
    if k == 0:  # covers n == 0
        return 0.0
    from scipy import stats  # deferred: importing the store needs only LABELS

    return float(stats.beta.ppf(1.0 - confidence, k, n - k + 1))


def min_goods_for(rate: float, confidence: float = 0.95) -> int:
    """Fewest goods whose zero false calls bound the rate at or below `rate` (59 for 5%, 95%)."""
    _check_rate(rate, confidence)
    alpha = 1.0 - confidence

    def bounds(n: int) -> bool:
        return 1.0 - alpha ** (1.0 / n) <= rate

    n = max(1, math.ceil(math.log(alpha) / math.log1p(-rate)))
    while n > 1 and bounds(n - 1):  # the closed form can land one off in floating point
        n -= 1
    while not bounds(n):
        n += 1
    return n


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _fit(
    target: str,
    rate: float,
    confidence: float,
    threshold: float | None,
    scores: tuple[np.ndarray, np.ndarray, int],
    need: int,
) -> ThresholdFit:
    """Counts, rates, bound and note of one threshold; `scores` is (goods, defects, presumed)."""
    goods, defects, presumed = scores
    n, m = len(goods), len(defects)
    on_goods = target == "false_call_rate"
    backing, backed = (n, "goods") if on_goods else (m, "defects")
    if threshold is None:
        note = f"No {backed} to fit from: label at least {need} {backed}."
        return ThresholdFit(
            target, rate, None, n, presumed, m, 0, 0, None, None, None, confidence, False, note
        )
    calls, hits = int((goods > threshold).sum()), int((defects > threshold).sum())
    if on_goods:
        bound = binomial_upper(calls, n, confidence)
        found = f"{calls} false calls, rate at most {_pct(bound)}"
    else:
        bound = binomial_lower(hits, m, confidence)
        found = f"{hits} detected, rate at least {_pct(bound)}"
    short = f"; too few {backed} to back {_pct(rate)}: need {need}" if backing < need else ""
    note = f"{n} goods ({presumed} presumed) and {m} defects: {found}"
    note += f" at {_pct(confidence)} confidence{short}."
    return ThresholdFit(
        target=target,
        target_rate=rate,
        threshold=threshold,
        goods=n,
        presumed_good=presumed,
        defects=m,
        false_calls=calls,
        detections=hits,
        false_call_rate=calls / n if n else None,
        detection_rate=hits / m if m else None,
        bound=bound,
        confidence=confidence,
        enough=backing >= need,
        note=note,
    )


def _scores(parts: list[Part], presume_passed_good: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(goods, defects, presumed goods) of the parts a fit considers."""
    presumed = sum(_presumed(p, presume_passed_good) for p in parts)
    return good_scores(parts, presume_passed_good), defect_scores(parts), presumed


def _unjudged(parts: list[Part], presume_passed_good: bool) -> np.ndarray:
    """Scores of parts no label or presumption covers (flagged, not yet labelled): each may be
    a false call the counts cannot see."""
    return np.array(
        [p.score for p in parts if _verdict(p) is None and not _presumed(p, presume_passed_good)],
        dtype=np.float64,
    )


def _unseen(fit: ThresholdFit, unjudged: np.ndarray) -> ThresholdFit:
    """A fit above which unlabelled flagged parts remain is not backed: any of them may be good."""
    if fit.threshold is None or fit.target != "false_call_rate":
        return fit
    above = int((unjudged > fit.threshold).sum())
    if not above:
        return fit
    note = fit.note.rstrip(".") + (
        f"; {above} flagged parts above it are unlabelled, each a possible false call: label them."
    )
    return dataclasses.replace(fit, enough=False, note=note)


def threshold_for_false_call_rate(
    parts: Iterable[Part], rate: float, confidence: float = 0.95, presume_passed_good: bool = True
) -> ThresholdFit:
    """The lowest threshold whose empirical false-call rate among goods is at most `rate`.

    Lowest, because it catches the most defects for the false calls allowed. Goods sorted
    descending g1 >= g2 >= ...: k = floor(rate * n) goods may be called, so the threshold is
    g(k+1); ties with it sit at the threshold and are not called (strict `>`).
    Enough when the goods could bound the rate even with zero false calls (`min_goods_for`).
    """
    _check_rate(rate, confidence)
    parts = list(parts)
    scores = _scores(parts, presume_passed_good)
    goods = np.sort(scores[0])[::-1]
    threshold = float(goods[math.floor(rate * len(goods) + _EPS)]) if len(goods) else None
    need = min_goods_for(rate, confidence)
    fit = _fit("false_call_rate", rate, confidence, threshold, scores, need)
    return _unseen(fit, _unjudged(list(parts), presume_passed_good))


def threshold_for_detection_rate(
    parts: Iterable[Part], rate: float, confidence: float = 0.95, presume_passed_good: bool = True
) -> ThresholdFit:
    """The highest threshold that still flags at least ceil(rate * m) of the m defects.

    Highest, because it costs the fewest false calls. The threshold must sit below d(j), the
    j-th highest defect: midway to the next lower score of any considered part, else d(j) - 1.
    Enough by the same zero-miss logic as goods: `min_goods_for(1 - rate)` defects.
    """
    _check_rate(rate, confidence)
    scores = _scores(list(parts), presume_passed_good)
    defects = np.sort(scores[1])[::-1]
    threshold = None
    if len(defects):
        dj = float(defects[math.ceil(rate * len(defects) - _EPS) - 1])
        every = np.concatenate(scores[:2])
        below = every[every < dj]
        threshold = (dj + float(below.max())) / 2.0 if below.size else dj - 1.0
    need = min_goods_for(1.0 - rate, confidence)
    return _fit("detection_rate", rate, confidence, threshold, scores, need)


def roc(parts: Iterable[Part], presume_passed_good: bool = True) -> Roc | None:
    """ROC of defects against goods; None unless both are present. Ties count half in the AUC."""
    parts = list(parts)
    goods = np.sort(good_scores(parts, presume_passed_good))
    defects = np.sort(defect_scores(parts))
    n, m = len(goods), len(defects)
    if n == 0 or m == 0:
        return None
    # Point i flags score > thresholds[i]: the max flags nothing, -inf flags everything.
    cuts = np.unique(np.concatenate([goods, defects]))[::-1]
    thresholds = np.append(cuts, -np.inf)
    fpr = (n - np.searchsorted(goods, thresholds, side="right")) / n
    tpr = (m - np.searchsorted(defects, thresholds, side="right")) / m
    # Trapezoids: a tied group moves diagonally, which is exactly counting ties half.
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return Roc(fpr, tpr, thresholds, auc, n, m)
