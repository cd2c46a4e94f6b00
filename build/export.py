"""Load a training run and export its nets to ONNX with the image preprocessing folded in.

Reads `teacher.pt`, `student.pt` and `manifest.json`; writes `teacher.onnx`, `student.onnx` (UINT8
NHWC images in, the three feature levels out, dynamic batch) and, for the fused layout, one
`dcam.onnx` whose outputs are the anomaly map, the normalised score and the decision.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from dcam.core import scoring
from dcam.core.errors import BuildError
from dcam.core.manifest import Manifest
from dcam.core.names import IMAGE
from dcam.core.scoring import ScoringSpec
from dcam.nets.features import FeatureExtractor, Normalize, read_state_dict


class FeatureNet(nn.Module):
    """UINT8 NHWC images -> the level features: what Triton's teacher/student models serve."""

    def __init__(self, backbone: str, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = FeatureExtractor(backbone)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net(self.normalize(images)))


class FusedNet(nn.Module):
    """Teacher, student and the anomaly map in one graph.

    Outputs: the anomaly map and the raw image score. Calibration and decision are the
    `calibrate` step's, which reads the request's product and threshold (a TensorRT plan cannot
    read request parameters); the graph then carries no BOOL tensor at all.
    """

    def __init__(self, teacher: FeatureNet, student: FeatureNet, spec: ScoringSpec) -> None:
        super().__init__()
        self.teacher, self.student, self.spec = teacher, student, spec

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scored = scoring.score(self.spec, self.teacher(images), self.student(images))
        return scored.maps, scored.raw[:, None]


def fused_net(run_dir: Path, manifest: Manifest) -> FusedNet:
    """The run's teacher, student and scoring rule as the one graph of the fused layout."""
    return FusedNet(
        load_feature_net(run_dir, manifest, "teacher"),
        load_feature_net(run_dir, manifest, "student"),
        manifest.scoring,
    ).eval()


def _load_weights(path: Path) -> dict:
    state = read_state_dict(path)
    if any(k.startswith("dcam.") for k in state):
        raise BuildError(
            f"{path} holds DCAM blocks (the inline control reading); only students "
            "without blocks can be built"
        )
    return state


def load_feature_net(run_dir: Path, manifest: Manifest, role: str) -> FeatureNet:
    """teacher.pt or student.pt as a FeatureNet; refuses weights of another backbone."""
    net = FeatureNet(manifest.backbone, manifest.mean, manifest.std)
    state = _load_weights(Path(run_dir) / manifest.weights_file(role))
    try:
        net.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BuildError(
            f"{role} weights do not match the manifest's backbone "
            f"{manifest.backbone!r}: {str(exc).splitlines()[0]}"
        ) from exc
    return net.eval()


def export_onnx(
    net: nn.Module, path: Path, output_names: list[str], size: list[int], opset: int = 17
) -> Path:
    """Trace `net` with a dynamic batch axis; the legacy exporter keeps the graph plain."""
    example = torch.zeros((2, size[0], size[1], 3), dtype=torch.uint8)
    axes = {name: {0: "batch"} for name in [IMAGE, *output_names]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=[IMAGE],
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return path
