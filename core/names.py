"""Tensor and model names shared by the exported graphs, the Triton repository and the client.

Written once here; the Triton models read theirs from their config.pbtxt, which the build
writes from these names.
"""

from __future__ import annotations

IMAGE = "IMAGE"  # UINT8 NHWC RGB images at the model's size
LEVELS = ("layer1", "layer2", "layer3")  # the feature levels teacher and student are matched on
ANOMALY_MAP, SCORE, IS_ANOMALOUS = "anomaly_map", "score", "is_anomalous"
RAW_SCORE = "raw_score"  # max of the map, before calibration (fused graph -> calibrate step)
OUTPUTS = (ANOMALY_MAP, SCORE, IS_ANOMALOUS)  # what every served repository answers
DECISION_OUTPUTS = (SCORE, IS_ANOMALOUS)  # without the map: 256 KiB less per image at 256 px
# INT64 [1] per image: the version of the deciding model, i.e. the calibration, that judged it
# (core/served_calibration.py). Not in OUTPUTS: repositories built before it lack it, and the
# client asks for it only where the model's metadata lists it.
CALIBRATION_VERSION = "calibration_version"
ENSEMBLE_MODEL = "dcam"  # the model a client calls, in both layouts
ROLES = ("teacher", "student")
POSTPROCESS_MODEL = "postprocess"  # ensemble layout: teacher || student -> postprocess
FUSED_MODEL = "fused"  # fused layout: one graph (map, raw score) -> calibrate (score, decision)
CALIBRATE_MODEL = "calibrate"
# The models requests enter, which take the images; the ensemble only routes, and the models
# after them see only what these admitted. Their queue time is what autoscaling watches.
ENTRY_MODELS = (*ROLES, FUSED_MODEL)


def feature_name(role: str, level: str) -> str:
    """The ensemble tensor carrying one network's features of one level, e.g. teacher_layer1."""
    return f"{role}_{level}"


# The request header that carries the key to Triton's restricted APIs (lower case: gRPC metadata
# keys are). `dcam-serve` restricts them to it; `dcam-client --api-key` sends it. Triton expects
# it on gRPC with a prefix: "triton-grpc-protocol-dcam-api-key".
API_KEY_HEADER = "dcam-api-key"
GRPC_RESTRICTED_HEADER_PREFIX = "triton-grpc-protocol-"
