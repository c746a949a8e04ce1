"""`python -m trainer.launch prepare`: photos in a bucket -> shards in the bucket, as a cluster job.

    prepare --image=IMG --tasks=N [--input_dir=gs://B/photos/] [--output_dir=gs://B/data]
            [--num_shards=S] [--holdout_fraction=F] [--name=RUN] [--cpu=C] [--memory=M] [--spot]
            [--arg=--recursive] [--dry_run]

Builds the Indexed Job of k8s/components/prepare/prepare.yaml (the manifest `kubectl apply -k
k8s/overlays/prepare` uses) with N tasks, creates it, streams task 0's log (again after each restart)
and exits 0 when every task succeeded, 1 otherwise. Resubmitting a name with the same flags resumes
that run; the last task to finish writes the manifests (trainer/data/prepare_tasks.py).
"""

import dataclasses
import os
import time
from typing import Optional

from absl import flags

from trainer.cluster.manifests import (
    TaskRequest,
    UsageError,
    add_task_flags,
    check_flag_args,
    overridden,
)

PATH_FLAGS = ("input_dir", "output_dir")
VALUE_FLAGS = ("num_shards", "holdout_fraction")
TASK_FLAGS = ("num_tasks", "task_index", "run_name")  # each task's, set by the Job from its environment
DEFAULT_SHARDS = 256  # k8s/components/prepare/prepare.yaml's --num_shards


def add_parser(sub) -> None:
    """The prepare subcommand; its flags are PrepareRequest's fields."""
    p = sub.add_parser("prepare", help="prepare data in the cluster: an Indexed Job of --tasks prepare tasks")
    p.add_argument(
        "--image",
        required=True,
        help="trainer image (it holds trainer.prepare); a tag is resolved to its digest",
    )
    p.add_argument(
        "--name",
        default=time.strftime("colorizer-prepare-%Y%m%d-%H%M%S"),
        help="run name (the Job's): the same name and flags resume a run",
    )
    for flag in PATH_FLAGS:
        p.add_argument(
            f"--{flag}",
            help=f"default: the colorizer-config ConfigMap's "
            f"{'PHOTOS_DIR' if flag == 'input_dir' else 'DATA_DIR'}",
        )
    p.add_argument(
        "--num_shards",
        type=int,
        help="training shards of all tasks together (default: the manifest's "
        "256); at least 16 per training worker, and at least --tasks",
    )
    p.add_argument("--holdout_fraction", type=float, help="default: the manifest's 0.05")
    p.add_argument("--cpu", help="CPU request and limit per task (also its decode processes), e.g. 4")
    add_task_flags(p, "python -m trainer.prepare", "--recursive")


def prepare_flags() -> flags.FlagValues:
    """trainer.prepare's flags, defined apart from the process-wide ones (its --seed is the trainer's too)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # trainer.prepare imports TensorFlow: keep it quiet
    from trainer.data.prepare_config import define_flags

    values = flags.FlagValues()
    define_flags(values)
    return values


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareRequest(TaskRequest):
    """A prepare run: an Indexed Job of `tasks` pods, each writing its share of the shards."""

    input_dir: Optional[str]
    output_dir: Optional[str]
    num_shards: Optional[int]
    holdout_fraction: Optional[float]

    def validate(self) -> None:
        """Also refuses a task with no shard of its own, and --arg flags that each task gets from the Job."""
        super().validate()
        if (self.num_shards or DEFAULT_SHARDS) < self.tasks:
            raise UsageError(
                f"--num_shards={self.num_shards or DEFAULT_SHARDS} is fewer than --tasks={self.tasks}: "
                "each task writes shards of its own"
            )
        known = prepare_flags()
        for name in TASK_FLAGS:
            delattr(known, name)
        check_flag_args(self.extra_flags, known, "python -m trainer.prepare that a task may set")

    def prepare_args(self, base_args: list) -> list:
        """The manifest's flags with the command line's replacing same-named ones."""
        overrides = [
            f"--{flag}={getattr(self, flag)}"
            for flag in PATH_FLAGS + VALUE_FLAGS
            if getattr(self, flag) is not None
        ]
        if self.cpu:
            overrides.append(f"--workers={max(1, int(float(self.cpu)))}")
        return overridden(base_args, overrides + list(self.extra_flags))


def build(request: PrepareRequest) -> list:
    """The Indexed Job `prepare` creates."""
    return [request.task_job("components/prepare/prepare.yaml", request.prepare_args)]
