"""Join the requests Triton hands a Python-backend model into one batch, and split results back.

Copied beside each Python-backend model at build time (no dcam imports). Works on numpy arrays
and on torch tensors (GPU inputs arrive as tensors through DLPack).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def on_one_device(per_request: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """[request][input] arrays on one device: all on the GPU when any input is there.

    Triton may hand a model some inputs in GPU memory and others in host memory (its CUDA pool
    falls back to pinned host memory when exhausted), so a batch must not assume either. numpy
    arrays stay numpy when no input is a torch tensor.
    """
    tensors = [a for arrays in per_request for a in arrays if _is_torch(a)]
    if not tensors:
        return [list(arrays) for arrays in per_request]
    import torch

    device = next((t.device for t in tensors if t.device.type != "cpu"), tensors[0].device)
    return [
        [a.to(device) if _is_torch(a) else torch.from_numpy(a).to(device) for a in arrays]
        for arrays in per_request
    ]


def _concat(parts: Sequence[Any]) -> Any:
    if _is_torch(parts[0]):
        import torch

        return torch.cat(list(parts))
    import numpy as np

    return np.concatenate(parts)


def join(per_request: Sequence[Sequence[Any]]) -> list[Any]:
    """[request][input] arrays -> one array per input, requests stacked along the batch axis."""
    return [_concat([arrays[i] for arrays in per_request]) for i in range(len(per_request[0]))]


def sizes(per_request: Sequence[Sequence[Any]]) -> list[int]:
    """Batch size of each request (its first input's leading dimension)."""
    return [int(arrays[0].shape[0]) for arrays in per_request]


def split(outputs: Mapping[str, Any], batch_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """One dict of output slices per request, in request order."""
    parts, start = [], 0
    for n in batch_sizes:
        parts.append({name: value[start : start + n] for name, value in outputs.items()})
        start += n
    return parts
