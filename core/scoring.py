"""The scoring rule, written once: features -> anomaly map -> image score -> z-score -> decision.

`ScoringSpec` is the frozen record of everything the rule needs (input size, level combination,
smoothing, normalisation statistics and thresholds, global and per product). Training writes it
into the manifest; the build reads it from there and hands it to the Triton post-processing
model as one JSON parameter; `score()` applies it in training's evaluation, `dcam-build verify`,
the fused ONNX graph, the post-processing model and the benchmarks. numpy arrays or torch tensors
(traceable into ONNX) both work. The calibrations, and the one `judge` every decision goes
through, come from calibration.py. The build copies this file, `calibration.py` and
`anomaly_map.py` beside the Triton model, so they import nothing else from dcam.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

if __package__:  # imported as dcam.core.scoring
    from dcam.core import anomaly_map as amap

    # Calibration, decide and judge live with the calibrator; imported here for callers too.
    from dcam.core.calibration import Calibration, ConfigError, judge
    from dcam.core.calibration import decide as decide
else:  # a copy beside a Triton model: always its siblings, even where dcam is installed
    import anomaly_map as amap  # type: ignore[no-redef]
    from calibration import Calibration, ConfigError, judge  # type: ignore[no-redef]
    from calibration import decide as decide  # type: ignore[no-redef]


THRESHOLD_PARAMETER = "threshold"  # request parameter overriding the calibrated threshold
CATEGORY_PARAMETER = "category"  # request parameter naming the product whose calibration applies
SCORING_PARAMETER = "scoring"  # model-config parameter carrying this record as JSON


def request_parameters(threshold: float | None, category: str | None) -> dict[str, Any]:
    """The request parameters the served model reads: a threshold override, a product name."""
    params: dict[str, Any] = {}
    if threshold is not None:
        params[THRESHOLD_PARAMETER] = float(threshold)
    if category is not None:
        params[CATEGORY_PARAMETER] = category
    return params


def request_category(parameters: Mapping[str, Any]) -> str | None:
    """The product a request names (its `category` parameter), None if it names none."""
    value = parameters.get(CATEGORY_PARAMETER)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"request parameter {CATEGORY_PARAMETER!r} must be a product name, got {value!r}"
        )
    return value


def request_threshold(parameters: Mapping[str, Any]) -> float | None:
    """The threshold a request asks for (its `threshold` parameter), None if it asks for none."""
    value = parameters.get(THRESHOLD_PARAMETER)
    if value is None:
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if threshold != threshold or threshold in (float("inf"), float("-inf")):
        raise ConfigError(
            f"request parameter {THRESHOLD_PARAMETER!r} must be a finite number, got {value!r}"
        )
    return threshold


@dataclass(frozen=True)
class ScoringSpec:
    """Everything the scoring rule needs, from the manifest or the Triton model's parameters."""

    size: tuple[int, int]  # anomaly maps are upsampled to the input size (H, W)
    combine: str  # how per-level maps are combined: sum or product
    sigma: float  # Gaussian smoothing of the map in pixels; 0 disables
    calibration: Calibration  # global: used when a request names no product
    per_category: Mapping[str, Calibration] = field(default_factory=dict)
    rule: str = ""  # how the calibrator chose the thresholds, for people (calibration.py)

    def __post_init__(self) -> None:
        if self.combine not in amap.COMBINE_MODES:
            raise ConfigError(f"combine must be one of {amap.COMBINE_MODES}, got {self.combine!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"size must be (height, width) > 0, got {self.size}")

    def calibration_for(self, category: str | None = None) -> Calibration:
        """The product's calibration, the global one for None; unknown names are an error."""
        if category is None:
            return self.calibration
        if category not in self.per_category:
            raise ConfigError(
                f"unknown category {category!r}; calibrated: {sorted(self.per_category)}"
            )
        return self.per_category[category]

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "combine": self.combine,
            "sigma": self.sigma,
            "global": self.calibration.to_dict(),
            "per_category": {k: v.to_dict() for k, v in self.per_category.items()},
            "rule": self.rule,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScoringSpec:
        return cls(
            size=(int(values["size"][0]), int(values["size"][1])),
            combine=str(values["combine"]),
            sigma=float(values["sigma"]),
            calibration=Calibration.from_dict(values["global"]),
            per_category={
                k: Calibration.from_dict(v) for k, v in values.get("per_category", {}).items()
            },
            rule=str(values.get("rule", "")),
        )

    def to_json(self) -> str:
        """One string, as carried by a Triton model parameter."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ScoringSpec:
        return cls.from_dict(json.loads(text))


@dataclass
class Scored:
    """The rule's outputs for a batch: maps (N, H, W), raw and normalised scores and decisions."""

    maps: Any
    raw: Any  # max of each map
    normalised: Any  # z-score with the chosen calibration
    decisions: Any  # normalised > threshold


def anomaly_maps(spec: ScoringSpec, teacher: Sequence[Any], student: Sequence[Any]) -> Any:
    """Per-level 1 - cos, upsampled to the input size, combined and smoothed: (N, H, W)."""
    return amap.anomaly_map(teacher, student, spec.size, spec.combine, spec.sigma)


def score_maps(
    spec: ScoringSpec, maps: Any, threshold: float | None = None, category: str | None = None
) -> Scored:
    """Image scores, z-scores and decisions of anomaly maps already computed."""
    raw = amap.image_scores(maps)
    return Scored(maps, raw, *judge(spec.calibration_for(category), raw, threshold))


def judge_request(spec: ScoringSpec, raw: Any, parameters: Mapping[str, Any]) -> tuple[Any, Any]:
    """A request's (normalised scores, decisions) from its raw scores: the calibration of the
    product its `category` parameter names (global without one), its `threshold` if given.

    Raises ConfigError (a ValueError) for an unknown product or a malformed parameter.
    """
    calibration = spec.calibration_for(request_category(parameters))
    return judge(calibration, raw, request_threshold(parameters))


def warm_up(spec: ScoringSpec, level_shapes: Sequence[Sequence[int]], device: str) -> None:
    """Run the rule once on zero torch features on `device`, so its constant matrices are built
    and copied there now (in a model's initialize), not per request or inside a CUDA graph.

    Args:
        level_shapes: (C, h, w) of each feature level.
    """
    import torch

    zeros = [torch.zeros((1, *shape), device=device) for shape in level_shapes]
    score(spec, zeros, zeros)


def score(
    spec: ScoringSpec,
    teacher: Sequence[Any],
    student: Sequence[Any],
    threshold: float | None = None,
    category: str | None = None,
) -> Scored:
    """The whole rule on teacher and student features (N, C, h, w) per level.

    Args:
        threshold: overrides the calibrated threshold (the request parameter `threshold`).
        category: the product whose calibration to use; None for the global one.
    """
    return score_maps(spec, anomaly_maps(spec, teacher, student), threshold, category)
