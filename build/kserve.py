"""The KServe alternative for one build: deploy/kserve/inferenceservice.yaml with the figures
`dcam-build deploy` computed for the Kustomize overlay (runtime tag, resources, where the
repository is, the GPU product), written beside the overlay. Apply it instead of the overlay,
not with it: `kubectl apply -f OUT/inferenceservice.yaml`. Builds that KServe's stock Triton
runtime cannot serve as they are get none (`kserve_refusal`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcam.core.errors import ConfigError

GPU = "nvidia.com/gpu"


def volume_uri(path: str, claim: str, mount: str) -> str:
    """A repository path on the model volume (claim, mounted at mount) as KServe's
    pvc://CLAIM/PATH."""
    where = Path(path)
    if not where.is_relative_to(mount):
        raise ConfigError(
            f"--model-repository {path} is neither object storage nor under the model volume's "
            f"{mount}: KServe cannot reach it"
        )
    rest = where.relative_to(mount).as_posix()
    return f"pvc://{claim}" + ("" if rest == "." else f"/{rest}")


def kserve_refusal(plans_in_pod: bool, image: str | None) -> str | None:
    """Why KServe's Triton runtime cannot serve a build as it is, or None."""
    if plans_in_pod:
        return "not written: the pods build the plans, in the Deployment's initContainer only"
    if image:
        return "not written: KServe's Triton runtime runs NVIDIA's image, not --image"
    return None


def inference_service(
    template: Path,
    *,
    tag: str,
    uri: str,
    resources: dict,
    gpu: bool,
    cuda_pool_bytes: int | None,
    namespace: str | None,
    annotations: dict[str, str],
    node_selector: dict[str, str | None] | None = None,
) -> dict:
    """The template with this build's runtime tag, storage, resources, annotations and, for
    plans, the GPU product they load on (keys whose value is None are left out)."""
    service = yaml.safe_load(template.read_text())
    if namespace:
        service["metadata"]["namespace"] = namespace
    service["metadata"].setdefault("annotations", {}).update(annotations)
    model = service["spec"]["predictor"]["model"]
    model.update(runtimeVersion=tag, storageUri=uri)
    model["resources"] = {kind: dict(values) for kind, values in resources.items()}
    if gpu:
        for kind in ("requests", "limits"):
            model["resources"][kind][GPU] = "1"
        model["args"] = [
            *model.get("args", []),
            f"--cuda-memory-pool-byte-size=0:{cuda_pool_bytes}",
        ]
    selector = {k: v for k, v in (node_selector or {}).items() if v is not None}
    if selector:
        service["spec"]["predictor"]["nodeSelector"] = selector
    return service
