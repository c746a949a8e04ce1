"""Kubernetes objects for `trainer.launch`: the manifests in k8s/ with a run's overrides applied.

Built from the same YAML that `kubectl apply` uses, so a launched run and an applied one can't drift.
A run is described once by a frozen request (`SubmitRequest` in trainer/cluster/train_job.py,
`PrepareRequest` in prepare_job.py, `ColorizeRequest` in colorize_job.py), built and checked from
the command line before anything is created; this module holds what they share.
TensorFlow-free: --arg flags are checked against trainer/train/config.py's definitions of the trainer's.
"""

import argparse
import copy
import dataclasses
import re
from pathlib import Path
from typing import Callable, Optional, TypeVar

import yaml
from absl import flags

from trainer.cluster.image import UnresolvedImage, pinned_image
from trainer.train import config

# Where the manifests are looked for: k8s/ next to the package (a checkout or an editable install),
# the copy `pip install .` puts inside the package (setup.py), then k8s/ under the working directory.
MANIFEST_DIRS = (
    Path(__file__).resolve().parents[2] / "k8s",  # a checkout
    Path(__file__).resolve().parents[1] / "k8s",  # installed: setup.py ships k8s/ as trainer/k8s
    Path.cwd() / "k8s",
)
TRAINER_CONTAINERS = ("trainer", "tensorflow")
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
FLAG_ARG = re.compile(r"--([a-z_0-9]+)(?:=(.*))?", re.S)
PATH_FLAGS = ("train_data", "eval_data", "model_dir", "export_dir")
GPUS_PER_NODE = 2  # the documented GPU pool: g2-standard-24, 2 x L4 (docs/KUBERNETES.md)
TFJOB_GROUP, TFJOB_VERSION, TFJOB_PLURAL = "kubeflow.org", "v1", "tfjobs"  # the TFJob custom resource
CHIEF_SELECTOR = {
    "Job": "batch.kubernetes.io/job-name={name}",
    "TFJob": "training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=worker,"
    "training.kubeflow.org/replica-index=0",
}
SPOT_TOLERATION = {
    "key": "cloud.google.com/gke-spot",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}
MANIFESTS_HELP = (
    "folder holding job.yaml and components/ (default: the checkout's k8s/, else the package's copy)"
)
DIGEST_HINT = (
    "pass --image=NAME@sha256:... "
    "(after docker push: docker inspect --format='{{index .RepoDigests 0}}' IMAGE)"
)


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


class LaunchError(Exception):
    """The cluster refused or lacks something: reported in one line, exit code 1."""


def manifest_dir(explicit: Optional[str]) -> Path:
    """--manifests, else the first of MANIFEST_DIRS holding job.yaml; the error names every place tried."""
    for path in [Path(explicit)] if explicit else MANIFEST_DIRS:
        if (path / "job.yaml").is_file():
            return path
    raise UsageError(
        f"no job.yaml in {explicit or ', '.join(map(str, MANIFEST_DIRS))}: pass --manifests=DIR "
        "(a checkout's k8s/)"
    )


def load_objects(directory: Path, relative: str) -> list:
    return [d for d in yaml.safe_load_all((directory / relative).read_text()) if d]


def check_flag_args(flag_args, known: flags.FlagValues, program: str) -> None:
    """Each --arg must be a flag of `program` with a value it parses: refused here, not by a pod later."""
    for arg in flag_args:
        problem = flag_problem(arg, known, program)
        if problem:
            raise UsageError(f"--arg={arg!r}: {problem}")


def flag_problem(arg: str, known: flags.FlagValues, program: str) -> Optional[str]:
    """Why absl would refuse `arg` (--name, --noname or --name=value) given the flags `known`, else None."""
    match = FLAG_ARG.fullmatch(arg)
    name, value = match.groups() if match else ("", None)
    if name not in known and name.startswith("no") and name[2:] in known and known[name[2:]].boolean:
        return None if value is None else f"--{name} takes no value"
    if name not in known:
        return f"not a flag of {program}"
    flag = known[name]
    if value is None:
        return None if flag.boolean else f"--{name} needs a value (--{name}=...)"
    try:
        flag.parser.parse(value)
    except (TypeError, ValueError) as exc:
        return f"bad value for --{name}: {exc.args[0] if exc.args else exc}"
    return None


def trainer_flags() -> flags.FlagValues:
    """Every flag of `python -m trainer.task`, from trainer/train/config.py without importing TensorFlow."""
    known = flags.FlagValues()
    config.define_flags(known)
    return known


Request = TypeVar("Request", bound="RunRequest")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What `submit`, `prepare` and `colorize` share: the run's name and place, its image, its limits, how to
    start it.

    Field names are the command line's (`extra_flags` is --arg), so `from_args` reads them all alike.
    """

    namespace: str
    name: str
    image: str  # by digest once built by from_args: restarted pods must run the same code
    manifests: Path  # the folder holding job.yaml and components/
    cpu: Optional[str]
    memory: Optional[str]
    spot: bool
    max_hours: Optional[float]
    extra_flags: tuple[str, ...]
    dry_run: bool
    no_wait: bool

    @classmethod
    def from_args(cls: type[Request], args: argparse.Namespace) -> Request:
        """The request from the command line, checked once; a tag is resolved last (it asks the registry)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        request = cls(
            **{
                **values,
                "manifests": manifest_dir(args.manifests),
                "extra_flags": tuple(args.extra_flags or ()),
            }
        )
        request.validate()
        try:
            return dataclasses.replace(request, image=pinned_image(request.image))
        except UnresolvedImage as exc:
            raise UsageError(f"--image={request.image}: {exc}; {DIGEST_HINT}") from None

    def validate(self) -> None:
        """Raises UsageError for what the cluster would only reject later, or never."""
        if not NAME.match(self.name):
            raise UsageError(
                f"--name={self.name!r}: lowercase letters, digits and '-', at most 40 characters"
            )
        if self.max_hours is not None and not self.max_hours > 0:
            raise UsageError(f"--max_hours={self.max_hours}: must be > 0")

    def named(self, obj: dict, name: str) -> dict:
        """A copy of a manifest's object as `name` in this run's namespace (kubectl's annotations dropped)."""
        obj = copy.deepcopy(obj)
        obj["metadata"].update(name=name, namespace=self.namespace)
        obj["metadata"].pop("annotations", None)
        return obj

    def label(self, obj: dict, template: dict) -> None:
        """Marks the object and its pods with the run name, so runs never select each other's pods."""
        for meta in (obj["metadata"], template["metadata"]):
            meta.setdefault("labels", {})["colorizer.dev/run"] = self.name

    def set_deadline(self, run_spec: dict) -> None:
        """--max_hours as activeDeadlineSeconds: a backstop for failures the policies ignore (preemption)."""
        if self.max_hours is not None:
            run_spec["activeDeadlineSeconds"] = int(self.max_hours * 3600)

    def set_limits(self, pod_spec: dict, container: dict) -> None:
        """The container's image, --cpu and --memory (request and limit alike), and Spot nodes with --spot."""
        container["image"] = self.image
        for kind in ("requests", "limits"):
            for key, value in (("cpu", self.cpu), ("memory", self.memory)):
                if value:
                    container["resources"][kind][key] = value
        if self.spot:
            pod_spec.setdefault("nodeSelector", {})["cloud.google.com/gke-spot"] = "true"
            pod_spec.setdefault("tolerations", []).append(dict(SPOT_TOLERATION))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskRequest(RunRequest):
    """A run of `tasks` independent pods: an Indexed Job whose task i is JOB_COMPLETION_INDEX of
    COLORIZER_NUM_TASKS, each doing its share (trainer/data/photo_source.py, `task_defaults`)."""

    tasks: int

    def validate(self) -> None:
        super().validate()
        if self.tasks < 1:
            raise UsageError(f"--tasks={self.tasks}: must be >= 1")

    def task_job(self, manifest: str, args: Callable[[list], list]) -> dict:
        """The Job of the component file `manifest` as this run: `tasks` pods (completions, parallelism
        and COLORIZER_NUM_TASKS agree), its container's args `args(the manifest's)`, image and limits."""
        [job] = [d for d in load_objects(self.manifests, manifest) if d["kind"] == "Job"]
        job = self.named(job, self.name)
        self.label(job, job["spec"]["template"])
        job["spec"]["completions"] = job["spec"]["parallelism"] = self.tasks
        self.set_deadline(job["spec"])
        [container] = job["spec"]["template"]["spec"]["containers"]
        container["args"] = args(container["args"])
        for env in container["env"]:
            if env["name"] == "COLORIZER_NUM_TASKS":
                env["value"] = str(self.tasks)
        self.set_limits(job["spec"]["template"]["spec"], container)
        return job


def add_task_flags(p, program: str, example: str) -> None:
    """--tasks and the run flags of a task Job subcommand; `example` is an --arg for `program`."""
    p.add_argument("--tasks", type=int, default=4, help="pods, each doing 1/N of the photos")
    p.add_argument("--memory", help="memory request and limit per task, e.g. 16Gi")
    p.add_argument(
        "--spot", action="store_true", help="run on GKE Spot VMs (a preempted task redoes its part)"
    )
    p.add_argument(
        "--max_hours", type=float, help="fail the Job after this long (default: the manifest's 24 h)"
    )
    p.add_argument(
        "--arg",
        dest="extra_flags",
        action="append",
        help=f"extra {program} flag, e.g. --arg={example} (repeatable)",
    )
    p.add_argument("--manifests", help=MANIFESTS_HELP)
    p.add_argument("--dry_run", action="store_true", help="print the Job instead of creating it")
    p.add_argument("--no_wait", action="store_true", help="return once created")


def overridden(base_args: list, overrides: list) -> list:
    """The manifest's flags with same-named ones (--x, --nox, --x=...) replaced by `overrides`, appended."""
    names = {o.split("=", 1)[0].replace("--no", "--", 1) for o in overrides}
    return [a for a in base_args if a.split("=", 1)[0].replace("--no", "--", 1) not in names] + overrides
