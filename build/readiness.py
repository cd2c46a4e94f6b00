"""Does an ONNX graph meet what TensorRT 10's ONNX parser accepts? Checked here, without TensorRT.

The rules are onnx-tensorrt's own, kept as data in `tensorrt_onnx_support.json` (its
docs/operators.md at the 10.1 GA release; the file names its source):
- opset inside the parser's range (9 to 20);
- every operator supported, with every input of a data type its row lists;
- UINT8 only as a network input or output ("UINT8 is only supported as network input or output
  tensor types"): a UINT8 input may feed nothing but Cast;
- BOOL only where it enters or leaves the network (graph input feeding a Cast, graph output):
  stricter than the table, which lets some operators take BOOL, so the engines keep every
  intermediate in the precisions we check numerically;
- inputs the table says "must be an initializer" / "a constant tensor" (e.g. Reduce*/Squeeze
  `axes`) are initializers or Constant outputs; their position comes from ONNX's op schemas;
- dynamic dimensions on the batch axis only (one optimisation profile over batch).

`dcam-build engines --target trt` runs it before building; the tests run it on every graph.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from dcam.core.errors import BuildError

SUPPORT_TABLE = Path(__file__).with_name("tensorrt_onnx_support.json")
_TYPE_NAMES = {  # ONNX TensorProto element types -> the names the table uses
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    16: "BF16",
}


@lru_cache(maxsize=1)
def support_table() -> dict:
    return json.loads(SUPPORT_TABLE.read_text())


def _type_names(model) -> dict[str, str]:
    """Element type of every named tensor: graph I/O, initializers, inferred intermediates."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types[value.name] = _TYPE_NAMES.get(value.type.tensor_type.elem_type, "OTHER")
    for init in graph.initializer:
        types[init.name] = _TYPE_NAMES.get(init.data_type, "OTHER")
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = _TYPE_NAMES.get(attr.t.data_type, "OTHER")
    return types


def _opset_problems(model, table: dict) -> list[str]:
    low, high = table["opset"]
    return [
        f"opset {op.version} is outside TensorRT {table['tensorrt']}'s range {low}-{high}"
        for op in model.opset_import
        if op.domain in ("", "ai.onnx") and not low <= op.version <= high
    ]


def _operator_problems(model, types: dict[str, str], table: dict) -> list[str]:
    problems = []
    for node in model.graph.node:
        label = f"node {node.name or '(unnamed)'} ({node.op_type})"
        row = table["supported"].get(node.op_type)
        if row is None:
            problems.append(f"{label}: not supported by TensorRT {table['tensorrt']}")
            continue
        for name in node.input:
            dtype = types.get(name)
            if name and dtype and dtype not in row["types"]:
                problems.append(f"{label}: input {name} is {dtype}; supported {row['types']}")
    return problems


def _constant_input_problems(model, table: dict) -> list[str]:
    """Inputs the parser needs at build time (restrictions naming them) must be constants."""
    import re

    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    constants = {i.name for i in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    problems = []
    for node in model.graph.node:
        restriction = table["supported"].get(node.op_type, {}).get("restrictions", "")
        named = re.findall(r"`(\w+)` must be (?:an initializer|a constant tensor)", restriction)
        if not named:
            continue
        schema = onnx.defs.get_schema(node.op_type, opset)
        positions = {p.name: i for i, p in enumerate(schema.inputs)}
        for name in named:
            i = positions.get(name)
            given = node.input[i] if i is not None and i < len(node.input) else ""
            if given and given not in constants:
                problems.append(
                    f"node {node.name or '(unnamed)'} ({node.op_type}): input `{name}` "
                    f"({given}) must be an initializer for TensorRT"
                )
    return problems


def _io_type_problems(model, types: dict[str, str]) -> list[str]:
    """UINT8/BOOL only at the network's edges: a graph input feeding Cast, or a graph output."""
    graph = model.graph
    inputs, outputs = {v.name for v in graph.input}, {v.name for v in graph.output}
    problems = []
    for node in graph.node:
        for name in node.input:
            if types.get(name) in ("UINT8", "BOOL") and not (
                name in inputs and node.op_type == "Cast"
            ):
                problems.append(
                    f"node {node.name or '(unnamed)'} ({node.op_type}): consumes {types[name]} "
                    f"tensor {name}; TensorRT takes UINT8/BOOL only as a network input feeding "
                    "a Cast, or as a network output"
                )
        for name in node.output:
            if types.get(name) in ("UINT8", "BOOL") and name not in outputs:
                problems.append(
                    f"node {node.name or '(unnamed)'} ({node.op_type}): produces "
                    f"{types[name]} intermediate {name}"
                )
    return problems


def _shape_problems(model) -> list[str]:
    problems = []
    for value in [*model.graph.input, *model.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis > 0 and not dim.HasField("dim_value"):
                problems.append(
                    f"tensor {value.name}: axis {axis} is dynamic ({dim.dim_param or '?'}); "
                    "only the batch axis may be"
                )
    return problems


def tensorrt_problems(onnx_path: Path) -> list[str]:
    """Everything in the graph that TensorRT 10's parser would reject, one line each."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    table = support_table()
    types = _type_names(model)
    return [
        *_opset_problems(model, table),
        *_operator_problems(model, types, table),
        *_constant_input_problems(model, table),
        *_io_type_problems(model, types),
        *_shape_problems(model),
    ]


def require_tensorrt_ready(onnx_path: Path, problems: list[str] | None = None) -> None:
    """Raise BuildError naming every node that breaks a TensorRT rule (see the module doc).

    Args:
        problems: `tensorrt_problems(onnx_path)` when the caller has them already.
    """
    problems = tensorrt_problems(onnx_path) if problems is None else problems
    if problems:
        raise BuildError(
            f"{onnx_path.name} is not ready for TensorRT {support_table()['tensorrt']} "
            f"({support_table()['source']}):\n" + "\n".join(problems)
        )
