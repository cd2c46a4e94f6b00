"""Simplify an exported ONNX graph with onnxsim and check it with onnx.checker."""

from __future__ import annotations

from pathlib import Path

from dcam.core.errors import BuildError


def simplify_onnx(src: Path, dst: Path) -> dict:
    """Write the simplified, checked graph to `dst`; returns node counts before and after."""
    import onnx  # deferred: the build extra is optional
    import onnxsim

    model = onnx.load(str(src))
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:
        raise BuildError(f"onnxsim failed on {src}: {exc}") from exc
    if not ok:
        raise BuildError(f"onnxsim could not validate the simplified {src}")
    try:
        onnx.checker.check_model(simplified, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"onnx.checker rejects the simplified {src}: {exc}") from exc
    onnx.save(simplified, str(dst))
    return {"nodes_before": len(model.graph.node), "nodes_after": len(simplified.graph.node)}


def onnx_io(path: Path) -> dict:
    """Names, element types and per-item dims (batch axis dropped) of a graph's inputs/outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            dims = [
                d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
            ]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
            out.append({"name": v.name, "dtype": dtype.name, "dims": dims[1:]})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}
