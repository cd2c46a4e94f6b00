"""A stand-in for trtexec, which cannot be installed on these machines (README, "What runs").

It accepts the flags build_plans.py passes, checks them against the rules of the TensorRT
version it plays (TensorRT 11's sampleOptions.cpp refuses `--fp16` as an unknown option), and
does what trtexec would with ONNX Runtime on the CPU: a "plan" is the ONNX graph copied, and a
run writes `--exportOutput` in trtexec's JSON layout (a list of {name, dimensions "AxB",
values}). Every call is logged to $STANDIN_LOG. STANDIN_TENSORRT sets the version (110400).
STANDIN_NOISE adds that much to every exported value, to play a plan that disagrees.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import onnxruntime as ort

VERSION = os.environ.get("STANDIN_TENSORRT", "110400")
REMOVED_IN_11 = ("--fp16", "--bf16", "--int8", "--best")


def main(argv: list[str]) -> int:
    print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{VERSION}] # trtexec {' '.join(argv)}")
    with open(os.environ["STANDIN_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    if argv == ["--help"]:
        return 0
    flags = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), "") for a in argv)
    if VERSION.startswith("11") and any(a in REMOVED_IN_11 for a in argv):
        print(f"Unknown option: {[a for a in argv if a in REMOVED_IN_11]}")
        return 1
    if "onnx" in flags:
        shutil.copy(flags["onnx"], flags["saveEngine"])
        return 0
    name, path = flags["loadInputs"].split(":", 1)
    shape = [int(d) for d in flags["shapes"].split(":", 1)[1].split("x")]
    images = np.fromfile(path, np.uint8).reshape(shape)
    session = ort.InferenceSession(flags["loadEngine"], providers=["CPUExecutionProvider"])
    noise = float(os.environ.get("STANDIN_NOISE", "0"))
    outputs = session.run(None, {name: images})
    exported = [
        {
            "name": out.name,
            "dimensions": "x".join(map(str, value.shape)),
            "values": (value.astype(np.float64) + noise).ravel().tolist(),
        }
        for out, value in zip(session.get_outputs(), outputs, strict=True)
    ]
    with open(flags["exportOutput"], "w") as fh:
        json.dump(exported, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
