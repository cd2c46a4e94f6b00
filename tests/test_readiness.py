"""The TensorRT-readiness check: every exported graph passes, and graphs crafted to break each
of onnx-tensorrt's rules fail with the offending node named."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from dcam.build.readiness import require_tensorrt_ready, support_table, tensorrt_problems
from dcam.core.errors import BuildError


@pytest.mark.parametrize(
    ("layout", "model"), [("ensemble", "teacher"), ("ensemble", "student"), ("fused", "fused")]
)
def test_every_exported_graph_is_ready(
    layout: str, model: str, ensemble_repo: Path, fused_repo: Path
) -> None:
    path = (ensemble_repo if layout == "ensemble" else fused_repo) / model / "1" / "model.onnx"
    assert tensorrt_problems(path) == []
    graph = onnx.load(str(path)).graph
    consumers = [n.op_type for n in graph.node if "IMAGE" in n.input]
    assert consumers == ["Cast"], consumers  # UINT8 feeds a Cast first, then the transpose


def _save(tmp_path: Path, nodes, inputs, outputs, opset: int = 17, inits=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    return path


def _tensor(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def test_uint8_feeding_anything_but_cast(tmp_path: Path) -> None:
    path = _save(
        tmp_path,
        [
            helper.make_node("Transpose", ["IMAGE"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
            helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT, name="to_float"),
        ],
        [_tensor("IMAGE", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [_tensor("y", TensorProto.FLOAT, ["batch", 3, 8, 8])],
    )
    problems = "\n".join(tensorrt_problems(path))
    assert "node to_nchw (Transpose): consumes UINT8 tensor IMAGE" in problems
    assert "node to_nchw (Transpose): produces UINT8 intermediate t" in problems
    with pytest.raises(BuildError, match="to_nchw"):
        require_tensorrt_ready(path)


def test_bool_intermediate(tmp_path: Path) -> None:
    path = _save(
        tmp_path,
        [
            helper.make_node("Greater", ["x", "x"], ["b"], name="compare"),
            helper.make_node("Not", ["b"], ["y"], name="negate"),
        ],
        [_tensor("x", TensorProto.FLOAT, ["batch", 1])],
        [_tensor("y", TensorProto.BOOL, ["batch", 1])],
    )
    problems = "\n".join(tensorrt_problems(path))
    assert "node compare (Greater): produces BOOL intermediate b" in problems
    assert "node negate (Not): consumes BOOL tensor b" in problems


def test_unsupported_operator_and_data_type(tmp_path: Path) -> None:
    assert "Bernoulli" in support_table()["unsupported"]
    path = _save(
        tmp_path,
        [
            helper.make_node("Bernoulli", ["p"], ["r"], name="coin"),
            helper.make_node("MatMul", ["i", "i"], ["m"], name="int_matmul"),
        ],
        [_tensor("p", TensorProto.FLOAT, ["batch", 4]), _tensor("i", TensorProto.INT32, [4, 4])],
        [_tensor("r", TensorProto.FLOAT, ["batch", 4]), _tensor("m", TensorProto.INT32, [4, 4])],
    )
    problems = "\n".join(tensorrt_problems(path))
    assert "node coin (Bernoulli): not supported by TensorRT 10.1" in problems
    assert "node int_matmul (MatMul): input i is INT32" in problems


def test_opset_outside_the_parser_range(tmp_path: Path) -> None:
    path = _save(
        tmp_path,
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [_tensor("x", TensorProto.FLOAT, ["batch", 4])],
        [_tensor("y", TensorProto.FLOAT, ["batch", 4])],
        opset=21,
    )
    assert tensorrt_problems(path) == ["opset 21 is outside TensorRT 10.1's range 9-20"]


def test_dynamic_dimension_other_than_batch(tmp_path: Path) -> None:
    path = _save(
        tmp_path,
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [_tensor("x", TensorProto.FLOAT, ["batch", "width"])],
        [_tensor("y", TensorProto.FLOAT, ["batch", 4])],
    )
    assert tensorrt_problems(path) == [
        "tensor x: axis 1 is dynamic (width); only the batch axis may be"
    ]


def test_support_table_names_its_source() -> None:
    table = support_table()
    assert "onnx-tensorrt" in table["source"] and table["opset"] == [9, 20]
    assert "UINT8" not in table["supported"]["Transpose"]["types"]
    assert "UINT8" in table["supported"]["Cast"]["types"]


def test_axes_computed_at_run_time(tmp_path: Path) -> None:
    """onnx-tensorrt: ReduceSum's `axes` must be an initializer (a build-time constant)."""
    path = _save(
        tmp_path,
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum_runtime_axes"),
            helper.make_node("ReduceSum", ["x", "one"], ["z"], name="sum_fixed_axes"),
        ],
        [_tensor("x", TensorProto.FLOAT, ["batch", 4]), _tensor("axes", TensorProto.INT64, [1])],
        [
            _tensor("y", TensorProto.FLOAT, ["batch", 1]),
            _tensor("z", TensorProto.FLOAT, ["batch", 1]),
        ],
        inits=[helper.make_tensor("one", TensorProto.INT64, [1], [1])],
    )
    problems = [p for p in tensorrt_problems(path) if "must be an initializer" in p]
    assert problems == [
        "node sum_runtime_axes (ReduceSum): input `axes` (axes) must be an initializer for TensorRT"
    ]
