"""Which layers run in FP16, written down: the FP16 ONNX graph that TensorRT 11 builds from.

TensorRT 11 networks are strongly typed: a layer runs in the type its ONNX tensors have, and
the builder flags that let TensorRT pick FP16 by itself are gone (NVIDIA's "Migrating from
TensorRT 10.x to 11.x"). The precision decision is therefore ours, made here once:

- FP16: the convolutional backbones of teacher and student (Conv, Relu, Add, MaxPool under the
  exported `net` modules), where tensor cores do the work and the values are features of
  bounded size after BatchNorm folding.
- FP32: everything else. The input cast and normalisation (a UINT8 image divided by a std near
  0.2), the cosine between teacher and student (norms, divisions and sums over 64-256 channels,
  whose result near 1 is subtracted from 1, the anomaly map's whole signal), the upsampling and
  smoothing matrices, and the image score's ReduceMax.

The conversion is NVIDIA ModelOpt's AutoCast, with the FP32 nodes named by one pattern. It
inserts a Cast only where the two regions meet, and graph inputs and outputs keep their types,
so Triton configs are the same for FP16 and FP32 graphs. `fp16_emulation` rounds weights and
every FP16 activation to FP16 in an FP32 graph. ONNX Runtime on a CPU runs that, so the FP16
error can be measured on a machine without a GPU: ONNX Runtime computes an FP16 graph's
layers in FP32 when it has no FP16 kernel, which would round only the weights.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from dcam.core.errors import BuildError

# Node names from torch.onnx's module scopes: /net/... in a teacher or student graph,
# /teacher/net/... and /student/net/... in the fused graph.
FP16_SCOPE = re.compile(r"^/((teacher|student)/)?net/")
FP32_NODES = r"^(?!/((teacher|student)/)?net/)"  # AutoCast's nodes_to_exclude: all but those
_FLOAT, _HALF = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16


def runs_in_fp16(node_name: str) -> bool:
    return FP16_SCOPE.match(node_name) is not None


def convert_fp16(src: Path, dst: Path) -> dict:
    """Write the mixed-precision graph of `src` to `dst`; returns its precision summary."""
    import onnx

    try:
        from modelopt.onnx.autocast import configure_logging, convert_to_mixed_precision
    except ImportError as exc:
        raise BuildError(
            f"TensorRT 11 builds FP16 from an FP16 ONNX graph, made with NVIDIA ModelOpt's "
            f"AutoCast, which is not importable here ({exc}); install dcam's build extra"
        ) from exc
    configure_logging("WARNING")  # one INFO line per node otherwise
    model = convert_to_mixed_precision(
        onnx_path=str(src),
        low_precision_type="fp16",
        nodes_to_exclude=[FP32_NODES],
        keep_io_types=True,
        # The node pattern alone decides; AutoCast's data-range rule would need calibration
        # images and could move layers between builds of the same run.
        data_max=float("inf"),
    )
    onnx.save(model, str(dst))
    summary = precision_summary(model)
    if not summary["fp16"]:
        raise BuildError(f"{src.name}: no layer matched the FP16 backbone scope {FP16_SCOPE}")
    return summary


def _output_types(model) -> dict[str, int]:
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def precision_summary(model) -> dict:
    """Operators per precision (by each node's float output type) and the Casts between."""
    types = _output_types(model)
    counts: dict[str, Counter] = {"fp16": Counter(), "fp32": Counter()}
    casts = 0
    for node in model.graph.node:
        if node.op_type == "Cast":
            casts += 1
            continue
        kinds = {types.get(name) for name in node.output}
        if _HALF in kinds:
            counts["fp16"][node.op_type] += 1
        elif _FLOAT in kinds:
            counts["fp32"][node.op_type] += 1
    return {
        "fp16": dict(sorted(counts["fp16"].items())),
        "fp32": dict(sorted(counts["fp32"].items())),
        "casts": casts,
        "rule": f"FP16: nodes matching {FP16_SCOPE.pattern}; FP32: all others",
    }


def fp16_emulation(fp32_path: Path):
    """The FP32 graph with the FP16 region's weights and outputs rounded to FP16.

    Every float initializer an FP16-region node reads is rounded to FP16, and every output of
    such a node passes through Cast(FP16) and Cast(FP32). The arithmetic inside each layer
    stays FP32, as tensor cores accumulate; what is stored between layers is FP16, as in a
    TensorRT FP16 engine.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    region = {n.name for n in graph.node if runs_in_fp16(n.name)}
    read = {name for node in graph.node if node.name in region for name in node.input}
    for init in graph.initializer:
        if init.name in read and init.data_type == _FLOAT:
            rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.name not in region:
            continue
        for i, name in enumerate(list(node.output)):
            stored = f"{name}__fp32"
            node.output[i] = stored
            nodes.append(helper.make_node("Cast", [stored], [f"{name}__fp16"], to=_HALF))
            nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=_FLOAT))
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("value_info")
    return model
