"""Where the pods read a build's repository, one folder per build, and how it gets there.

Object storage (s3://, gs://, as://) is the default: Triton reads it itself, no claim is needed,
and block storage (what most clusters offer) cannot back the shared volume anyway. The build goes
to `<prefix>/<build digest>/`, uploaded by the plant with its cloud's own tool (the command is
printed). The volume route (`--storage volume`, and every GPU build whose pods make their plans)
uses deploy/components/volume: a ReadWriteMany claim, and a loader Job that copies the build from
an image (busybox plus the repository; the Dockerfile is written here) into
`/models/builds/<build digest>/`. Either way a new build is a new path: `kubectl rollout undo`
brings back the older ConfigMap, hence the older path, hence the older build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from dcam.build.deploy_components import VOLUME_COMPONENT
from dcam.build.deploy_gpu import MOUNT, PLAN_CACHE
from dcam.core.errors import ConfigError

OBJECT_STORES = ("s3://", "gs://", "as://")  # repositories Triton reads without a volume
STORAGE = ("object", "volume")
VOLUME_PREFIX = f"{MOUNT}/builds"  # builds on the model volume, one folder each
LOADER_JOB = "dcam-load-set-by-dcam-build-deploy"  # components/volume/loader-job.yaml's name
LOADER_IMAGE = "dcam-repository"  # its image name there, replaced by --loader-image
LOADER_BASE = "busybox:1.37"  # sh, cp and mv: all the loader runs
UPLOAD = {
    "s3://": "aws s3 sync {repo} {dest}/",
    "gs://": "gcloud storage rsync --recursive {repo} {dest}",
    "as://": "az storage copy --recursive -s '{repo}/*' -d <https URL of {dest}>",
}


@dataclass(frozen=True)
class Storage:
    """One build's place: `repository` is MODEL_REPOSITORY, `volume` whether it is the claim."""

    repository: str
    volume: bool
    digest: str

    @property
    def job_name(self) -> str:
        return f"dcam-load-{self.digest}"

    def loader_image(self, name: str | None) -> dict:
        """The kustomize images entry for the loader Job's image."""
        return {"name": LOADER_IMAGE, "newName": name or LOADER_IMAGE, "newTag": self.digest}

    def next_steps(self, repo: Path, loader_image: str | None, out: Path) -> list[str]:
        """What the plant runs to put the build in place, before `kubectl apply`."""
        if not self.volume:
            store = next(s for s in OBJECT_STORES if self.repository.startswith(s))
            upload = UPLOAD[store].format(repo=repo.resolve(), dest=self.repository)
            return [f"upload the build: {upload}"]
        image = f"{loader_image or LOADER_IMAGE}:{self.digest}"
        return [
            f"build the loader image: docker build -f {out.resolve() / 'repository.Dockerfile'} "
            f"-t {image} "
            f"{repo.resolve()} && docker push {image}",
            "the loader Job copies it onto the volume when the overlay is applied",
        ]


def storage(kind: str, prefix: str | None, digest: str, needs_volume: bool) -> Storage:
    """The build's folder under `prefix` on the chosen storage. `needs_volume`: the pods build
    their plans, which they keep on the volume."""
    if kind not in STORAGE:
        raise ConfigError(f"--storage {kind}: choose {' or '.join(STORAGE)}")
    if needs_volume and kind != "volume":
        raise ConfigError(
            "the pods build their plans and keep them on the model volume: pass --storage "
            "volume (a ReadWriteMany claim), or build the plans with --plans here"
        )
    if kind == "object":
        if not (prefix or "").startswith(OBJECT_STORES):
            raise ConfigError(
                "object storage (the default) needs --model-repository with a bucket prefix, "
                f"e.g. s3://plant-models/dcam ({', '.join(OBJECT_STORES)}); or pass "
                "--storage volume for a ReadWriteMany claim filled by a loader Job"
            )
        return Storage(f"{prefix.rstrip('/')}/{digest}", False, digest)
    prefix = (prefix or VOLUME_PREFIX).rstrip("/")
    where = Path(prefix)
    if prefix.startswith(OBJECT_STORES) or not where.is_relative_to(MOUNT) or where == Path(MOUNT):
        raise ConfigError(
            f"--storage volume: --model-repository must be a folder of the volume under "
            f"{MOUNT}, such as {VOLUME_PREFIX}, not {prefix}"
        )
    cache = Path(PLAN_CACHE)
    if where.is_relative_to(cache) or cache.is_relative_to(where):
        raise ConfigError(
            f"--model-repository {prefix} and the plan cache {PLAN_CACHE} overlap (the cache "
            f"holds copies of builds): use a folder such as {VOLUME_PREFIX}"
        )
    return Storage(f"{prefix}/{digest}", True, digest)


def dockerfile() -> str:
    """The loader image: the repository folder is the build context."""
    return (
        "# Written by `dcam-build deploy`: the loader Job's image, the build's repository in\n"
        "# /repository (the build context is the repository folder).\n"
        f"FROM {LOADER_BASE}\n"
        "COPY . /repository\n"
        "USER 1000:1000\n"
    )


def loader_patch(store: Storage) -> list[dict]:
    """A JSON6902 patch naming this build's loader Job."""
    return [{"op": "replace", "path": "/metadata/name", "value": store.job_name}]


def without_volume(gpu: bool) -> list[dict]:
    """Strategic-merge patches that take components/volume out of the GPU overlay again, for a
    build read from object storage (its plans built beforehand)."""
    if not gpu:
        return []
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "dcam-models"},
            "$patch": "delete",
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": LOADER_JOB},
            "$patch": "delete",
        },
    ]


def base_storage_gib(deploy_dir: Path) -> float:
    """The model volume's size in components/volume (e.g. 2Gi)."""
    claim = yaml.safe_load((deploy_dir / VOLUME_COMPONENT / "pvc.yaml").read_text())
    size = claim["spec"]["resources"]["requests"]["storage"]
    if not size.endswith("Gi"):
        raise ConfigError(f"deploy/{VOLUME_COMPONENT}/pvc.yaml asks for {size}: write it in Gi")
    return float(size.removesuffix("Gi"))


def volume_patch(deploy_dir: Path, needed_gib: int) -> dict | None:
    """Nothing while the component's claim is big enough (a bound claim can grow, never shrink,
    and only where its storage class allows); else a larger claim."""
    if needed_gib <= base_storage_gib(deploy_dir):
        return None
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "dcam-models"},
        "spec": {"resources": {"requests": {"storage": f"{needed_gib}Gi"}}},
    }
