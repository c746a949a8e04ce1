"""`python -m trainer.launch submit`: a training run as the Job of k8s/job.yaml (one node), or as
the Indexed Job + headless Service of k8s/components/multinode/ or the TFJob of k8s/components/tfjob/
(several nodes), with the run's image, flags, GPUs and resources set.
"""

import dataclasses
import time
from typing import Optional

from trainer.cluster.manifests import (
    GPUS_PER_NODE,
    MANIFESTS_HELP,
    PATH_FLAGS,
    TRAINER_CONTAINERS,
    RunRequest,
    UsageError,
    check_flag_args,
    load_objects,
    overridden,
    trainer_flags,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubmitRequest(RunRequest):
    """A training run: one single-node Job, or an Indexed Job + Service or a TFJob of `workers` nodes."""

    workers: int
    gpus: int
    kind: str  # the multi-node flavour: job or tfjob
    train_data: Optional[str]
    eval_data: Optional[str]
    model_dir: Optional[str]
    export_dir: Optional[str]

    def validate(self) -> None:
        super().validate()
        if self.workers < 1 or self.gpus < 0:
            raise UsageError("--workers must be >= 1 and --gpus >= 0")
        if self.kind == "tfjob" and self.workers < 2:
            raise UsageError("--kind=tfjob needs --workers >= 2 (one worker is the plain Job)")
        check_flag_args(self.extra_flags, trainer_flags(), "python -m trainer.task")

    def trainer_args(self, base_args: list) -> list:
        """The trainer's flags: the manifest's, with paths and --arg overrides replacing same-named ones."""
        overrides = [f"--{flag}={getattr(self, flag)}" for flag in PATH_FLAGS if getattr(self, flag)]
        if not self.model_dir:  # one checkpoint folder per run: resubmitting a name resumes that run
            overrides.append(f"--model_dir=$(MODEL_DIR)/{self.name}")
        if self.workers > 1:
            overrides.append("--strategy=multi_worker")
        return overridden(base_args, overrides + list(self.extra_flags))


def add_parser(sub) -> None:
    """The submit subcommand; its flags are SubmitRequest's fields."""
    s = sub.add_parser("submit", help="create a training run and follow it")
    s.add_argument(
        "--image",
        required=True,
        help="trainer image, REGION-docker.pkg.dev/PROJECT/colorizer/trainer:TAG "
        "or ...@sha256:DIGEST; a tag is resolved to its digest, so every restarted worker runs the same code",
    )
    s.add_argument(
        "--name", default=time.strftime("colorizer-%Y%m%d-%H%M%S"), help="run name (also the Job's)"
    )
    s.add_argument(
        "--workers", type=int, default=1, help="nodes; 1: single-node Job, >1: Indexed Job or TFJob"
    )
    s.add_argument(
        "--gpus", type=int, default=GPUS_PER_NODE, help="GPUs per worker, one worker per node (0: CPU only)"
    )
    s.add_argument("--kind", choices=("job", "tfjob"), default="job", help="multi-node flavour")
    s.add_argument("--cpu", help="CPU request and limit per worker, e.g. 8")
    s.add_argument("--memory", help="memory request and limit per worker, e.g. 32Gi")
    s.add_argument("--spot", action="store_true", help="run on GKE Spot VMs")
    s.add_argument(
        "--max_hours",
        type=float,
        help="fail the run after this long (activeDeadlineSeconds; "
        "default: the manifest's 72 h), the backstop for preemptions that never end",
    )
    for flag in PATH_FLAGS:
        s.add_argument(f"--{flag}", help="default: the colorizer-config ConfigMap's value")
    s.add_argument(
        "--arg",
        dest="extra_flags",
        action="append",
        help="extra trainer flag, e.g. --arg=--epochs=50 "
        "(repeatable; checked against python -m trainer.task's flags)",
    )
    s.add_argument("--manifests", help=MANIFESTS_HELP)
    s.add_argument("--dry_run", action="store_true", help="print the objects instead of creating them")
    s.add_argument("--no_wait", action="store_true", help="return once created")


def set_resources(pod_spec: dict, request: SubmitRequest) -> dict:
    """Image, flags, GPUs (0: CPU only, no GPU node selector) and optional CPU, memory and Spot nodes."""
    [container] = [c for c in pod_spec["containers"] if c["name"] in TRAINER_CONTAINERS]
    container["args"] = request.trainer_args(container.get("args", []))
    for kind in ("requests", "limits"):
        if request.gpus:
            container["resources"][kind]["nvidia.com/gpu"] = str(request.gpus)
        else:
            container["resources"][kind].pop("nvidia.com/gpu", None)
    if not request.gpus:
        pod_spec.get("nodeSelector", {}).pop("cloud.google.com/gke-accelerator", None)
        pod_spec["tolerations"] = [
            t for t in pod_spec.get("tolerations", []) if t.get("key") != "nvidia.com/gpu"
        ]
    request.set_limits(pod_spec, container)
    return container


def build(request: SubmitRequest) -> list:
    """The objects `submit` creates, in creation order."""
    if request.workers == 1:
        [job] = [d for d in load_objects(request.manifests, "job.yaml") if d["kind"] == "Job"]
        return [single_job(job, request)]
    if request.kind == "tfjob":
        [tfjob] = load_objects(request.manifests, "components/tfjob/tfjob.yaml")
        return [tf_job(tfjob, request)]
    objects = load_objects(request.manifests, "components/multinode/multinode.yaml")
    [service] = [d for d in objects if d["kind"] == "Service"]
    [job] = [d for d in objects if d["kind"] == "Job"]
    return indexed_job(job, service, request)


def single_job(job: dict, request: SubmitRequest) -> dict:
    job = request.named(job, request.name)
    request.label(job, job["spec"]["template"])
    set_resources(job["spec"]["template"]["spec"], request)
    request.set_deadline(job["spec"])
    return job


def indexed_job(job: dict, service: dict, request: SubmitRequest) -> list:
    """Indexed Job + headless Service, wired the way trainer/train/distribute.py reads them."""
    job, service = request.named(job, request.name), request.named(service, f"{request.name}-workers")
    template = job["spec"]["template"]
    request.label(job, template)
    request.label(service, {"metadata": {}})
    service["spec"]["selector"]["colorizer.dev/run"] = request.name
    job["spec"]["completions"] = job["spec"]["parallelism"] = request.workers
    request.set_deadline(job["spec"])
    template["spec"]["subdomain"] = service["metadata"]["name"]
    container = set_resources(template["spec"], request)
    for env in container["env"]:
        if env["name"] == "COLORIZER_NUM_WORKERS":
            env["value"] = str(request.workers)
        elif env["name"] == "COLORIZER_SERVICE":
            env["value"] = service["metadata"]["name"]
    return [job, service]


def tf_job(tfjob: dict, request: SubmitRequest) -> dict:
    tfjob = request.named(tfjob, request.name)
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    worker["replicas"] = request.workers
    request.set_deadline(tfjob["spec"]["runPolicy"])
    request.label(tfjob, worker["template"])
    set_resources(worker["template"]["spec"], request)
    return tfjob
