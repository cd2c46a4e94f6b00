"""The engine step: TensorRT plans from a built repository's ONNX graphs, where they will serve.

A plan loads only in the TensorRT that built it, and by default only on the GPU model it was
built on. So this step runs in the serving image itself (NVIDIA's `tritonserver:<release>-py3`,
which ships trtexec and Python but neither dcam, numpy nor ONNX Runtime), on the GPU product
that serves: the standard library and trtexec are all it uses. `dcam-build engines --target trt`
copies this file into the repository as `build_plans.py` beside `plans.json`, the recipe it
reads. deploy/'s GPU overlay runs it in an initContainer; `dcam-build engines --plans here`
uses the same commands in-process.

  python3 REPO/build_plans.py --source REPO --cache DIR [--link PATH]

writes `DIR/<gpu>_trt<version>/`: the repository with a plan beside each graph, each plan
checked against ONNX Runtime FP32 outputs the build stored for two images. A finished key is
reused, and two pods building one key at once both end with a complete copy (rename). The
TensorRT major version picks the FP16 route: 11 builds the FP16 graph strongly typed (its FP16
builder flag is gone), 10 builds the FP32 graph with `--fp16`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path

RECIPE = "plans.json"
SCRIPT = "build_plans.py"
PARITY_IMAGES = "parity_images.bin"
HARDWARE_LEVELS = {"none": None, "ampere+": "ampere+", "same-cc": "sameComputeCapability"}
# NVIDIA's containers keep trtexec here, off PATH.
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec",)


class PlanError(Exception):
    """A plan could not be built or differs from its reference; the message says why."""


def trtexec_command(
    trtexec: str,
    onnx: str,
    plan: str,
    shapes: dict[str, list[list[int]]],
    workspace_mib: int,
    timing_cache: str,
    tensorrt_major: int,
    hardware: str = "none",
) -> list[str]:
    """trtexec's build call. TensorRT 11 removed `--fp16` (strong typing is its default and
    `--stronglyTyped` a deprecated no-op: samples/common/sampleOptions.cpp at 11.0), so there
    the graph carries the precision; TensorRT 10 builds the FP32 graph with `--fp16`."""

    def spec(i: int) -> str:
        return ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in shapes.items())

    cmd = [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={plan}",
        f"--minShapes={spec(0)}",
        f"--optShapes={spec(1)}",
        f"--maxShapes={spec(2)}",
        f"--memPoolSize=workspace:{workspace_mib}M",
        f"--timingCacheFile={timing_cache}",
        "--skipInference",
    ]
    if tensorrt_major == 10:
        cmd.append("--fp16")
    if HARDWARE_LEVELS[hardware]:
        cmd.append(f"--hardwareCompatibilityLevel={HARDWARE_LEVELS[hardware]}")
    return cmd


def find_trtexec() -> str:
    found = shutil.which("trtexec") or next(
        (p for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise PlanError(f"trtexec is neither on PATH nor at {', '.join(TRTEXEC_PATHS)}")
    return found


def tensorrt_version(trtexec: str) -> str:
    """TensorRT's version from trtexec's banner ('[TensorRT v101300]' is 10.13.0)."""
    out = subprocess.run([trtexec, "--help"], capture_output=True, text=True, check=False)
    match = re.search(r"TensorRT v(\d+)", out.stdout + out.stderr)
    if match is None:
        raise PlanError(f"{trtexec} printed no TensorRT version banner")
    digits = match.group(1)
    return f"{int(digits[:-4])}.{int(digits[-4:-2])}.{int(digits[-2:])}"


def gpu() -> tuple[str, str]:
    """The GPU model and its compute capability, as nvidia-smi names them ('NVIDIA H200',
    '9.0'); one model per machine, since a plan is tied to it."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PlanError(f"cannot name the GPU with nvidia-smi: {exc}") from exc
    rows = {tuple(p.strip() for p in line.rsplit(",", 1)) for line in out.splitlines() if line}
    if len(rows) != 1 or len(next(iter(rows))) != 2:
        raise PlanError(f"expected one GPU model, nvidia-smi lists {sorted(rows)}")
    name, capability = rows.pop()
    return name, capability


def plan_key(gpu_name: str, version: str, hardware: str) -> str:
    """`<gpu model>_trt<version>[_<compatibility>]`, path-safe: what a plan is tied to."""
    product = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    suffix = "" if hardware == "none" else f"_{hardware}"
    return f"{product}_trt{version}{suffix}"


def read_floats(path: Path) -> array:
    values = array("f")
    values.frombytes(path.read_bytes())
    if sys.byteorder != "little":
        values.byteswap()
    return values


def relative_error(reference: array, candidate: list[float]) -> float:
    """max |candidate - reference| / max |reference|, as the rest of the build measures."""
    if len(reference) != len(candidate):
        raise PlanError(f"{len(candidate)} values where the reference has {len(reference)}")
    worst = max((abs(a - b) for a, b in zip(reference, candidate, strict=True)), default=0.0)
    scale = max((abs(a) for a in reference), default=0.0)
    return worst / scale if scale else worst


def check_plan(trtexec: str, repo: Path, model: dict, recipe: dict, work: Path) -> dict:
    """Run the plan on the stored images (trtexec --loadInputs/--exportOutput, raw and JSON
    files) and compare each output with ONNX Runtime's FP32 reference."""
    images = recipe["parity"]
    exported = work / f"{model['name']}.outputs.json"
    cmd = [
        trtexec,
        f"--loadEngine={repo / model['plan']}",
        f"--loadInputs={model['input']}:{repo / PARITY_IMAGES}",
        f"--shapes={model['input']}:{'x'.join(map(str, images['shape']))}",
        f"--exportOutput={exported}",
        "--iterations=1",
        "--warmUp=0",
        "--duration=0",
    ]
    run(cmd)
    outputs = {o["name"]: o["values"] for o in json.loads(exported.read_text())}
    errors = {}
    for out in model["outputs"]:
        reference = read_floats(repo / out["reference"])
        errors[out["name"]] = relative_error(reference, outputs[out["name"]])
    worst = max(errors.values())
    if worst > recipe["tolerance"]:
        raise PlanError(
            f"{model['name']}: the plan differs from ONNX Runtime FP32 by {worst:.2e} (relative) "
            f"> {recipe['tolerance']}"
        )
    return errors


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PlanError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}")


def build_into(
    source: Path, dest: Path, trtexec: str, tied_to: dict, cache: Path, work: Path
) -> dict:
    """Copy the repository to `dest`, build and check every plan there, and record what the
    plans are tied to in its manifest and plans_report.json."""
    recipe = json.loads((source / RECIPE).read_text())
    shutil.copytree(source, dest, symlinks=True)
    major = int(tied_to["tensorrt"].split(".")[0])
    report = {**tied_to, "models": {}}
    for model in recipe["models"]:
        graph = model["onnx_fp16"] if major == 11 else model["onnx"]
        cmd = trtexec_command(
            trtexec,
            str(dest / graph),
            str(dest / model["plan"]),
            {model["input"]: model["shapes"]},
            recipe["workspace_mib"],
            str(cache / "timing.cache"),
            major,
            recipe["hardware"],
        )
        run(cmd)
        report["models"][model["name"]] = check_plan(trtexec, dest, model, recipe, work)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest.setdefault("serving", {})["tensorrt"] = tied_to
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (dest / "plans_report.json").write_text(json.dumps(report, indent=1))
    return report


def build_plans(source: Path, cache: Path, trtexec: str, key: str | None = None) -> Path:
    """The plans for this GPU and TensorRT under `cache`, built once per key."""
    version = tensorrt_version(trtexec)
    if int(version.split(".")[0]) not in (10, 11):
        raise PlanError(f"TensorRT {version}: this step drives TensorRT 10 and 11 only")
    recipe = json.loads((source / RECIPE).read_text())
    name, capability = gpu()
    final = cache / (key or plan_key(name, version, recipe["hardware"]))
    if (final / "plans_report.json").is_file():
        return final
    tied_to = {
        "tensorrt": version,
        "gpu": name,
        "compute_capability": capability,
        "hardware_compatibility": recipe["hardware"],
        "triton_container": os.environ.get("NVIDIA_TRITON_SERVER_VERSION"),
    }
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".building-", dir=cache) as tmp:
        build_into(source, Path(tmp) / "repo", trtexec, tied_to, cache, Path(tmp))
        try:
            os.rename(Path(tmp) / "repo", final)
        except OSError:
            if not (final / "plans_report.json").is_file():  # not another pod's finished copy
                raise
    return final


def link(target: Path, path: Path) -> None:
    """Point `path` at `target`, replacing an older link in one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--cache", type=Path, required=True, help="where plans are kept")
    parser.add_argument("--link", type=Path, help="symlink to the ready repository")
    parser.add_argument("--key", help="cache key (default: <gpu>_trt<version>)")
    args = parser.parse_args(argv)
    try:
        ready = build_plans(args.source, args.cache, find_trtexec(), args.key)
        if args.link:
            link(ready, args.link)
    except (PlanError, OSError) as exc:
        print(f"build_plans: {exc}", file=sys.stderr)
        return 1
    print(ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
