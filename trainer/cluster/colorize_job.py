"""`python -m trainer.launch colorize`: photos in a bucket -> colorized PNGs in the bucket, as a cluster job.

    colorize --image=IMG --tasks=N [--input_dir=gs://B/photos/] [--output_dir=gs://B/colorized]
             [--model=gs://B/export] [--name=RUN] [--cpu=C] [--memory=M] [--spot]
             [--arg=--overwrite] [--dry_run] [--no_wait]

Builds the Indexed Job of k8s/components/colorize/colorize.yaml (the manifest `kubectl apply -k
k8s/overlays/colorize` uses) with N tasks, each `python -m trainer.client --local_model` on its share
of the photos, creates it, streams task 0's log (again after each restart) and exits 0 when every
task succeeded, 1 otherwise: a task that skipped photos (exit 5, each named in its log) fails its
index only, and the Job ends with that index in status.failedIndexes. Outputs are written whole and
existing ones skipped, so resubmitting (or a restarted task) writes only what is missing.
"""

import dataclasses
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

MANIFEST = "components/colorize/colorize.yaml"
# Each task's share comes from the Job's environment, and the Job runs the model in-process.
REFUSED_FLAGS = ("num_tasks", "task_index", "server")
CONFIG_KEYS = {"input_dir": "PHOTOS_DIR", "output_dir": "COLORIZED_DIR", "model": "EXPORT_DIR"}


def add_parser(sub) -> None:
    """The colorize subcommand; its flags are ColorizeRequest's fields."""
    p = sub.add_parser(
        "colorize", help="colorize an archive in the cluster: an Indexed Job of --tasks trainer.client tasks"
    )
    p.add_argument(
        "--image",
        required=True,
        help="trainer image (it holds trainer.client); a tag is resolved to its digest",
    )
    p.add_argument(
        "--name",
        default=time.strftime("colorizer-colorize-%Y%m%d-%H%M%S"),
        help="run name (the Job's); outputs already written are skipped whatever the name",
    )
    for flag, key in CONFIG_KEYS.items():
        p.add_argument(f"--{flag}", help=f"default: the colorizer-config ConfigMap's {key}")
    p.add_argument("--cpu", help="CPU request and limit per task (also TensorFlow's threads), e.g. 4")
    add_task_flags(p, "python -m trainer.client", "--overwrite")


def client_flags() -> flags.FlagValues:
    """trainer.client's flags, defined apart from the process-wide ones."""
    from trainer.serve import client  # TensorFlow-free (tests/test_client.py)

    values = flags.FlagValues()
    client.define_flags(values)
    return values


@dataclasses.dataclass(frozen=True, kw_only=True)
class ColorizeRequest(TaskRequest):
    """A colorize run: an Indexed Job of `tasks` pods, each colorizing its share of the photos."""

    input_dir: Optional[str]
    output_dir: Optional[str]
    model: Optional[str]

    def validate(self) -> None:
        """Also refuses paths a pod can't reach, and --arg flags that each task gets from the Job."""
        super().validate()
        for flag in ("input_dir", "output_dir", "model"):
            value = getattr(self, flag)
            if value and not value.startswith("gs://") and not (flag == "model" and value == "starter"):
                raise UsageError(f"--{flag}={value}: pods read and write the bucket, pass gs://BUCKET/...")
        known = client_flags()
        for name in REFUSED_FLAGS:
            delattr(known, name)
        check_flag_args(self.extra_flags, known, "python -m trainer.client that a task may set")

    def client_args(self, base_args: list) -> list:
        """The manifest's flags with the command line's replacing same-named ones; the input last."""
        overrides = [f"--local_model={self.model}"] if self.model else []
        overrides += [f"--output_dir={self.output_dir}"] if self.output_dir else []
        flag_args = [a for a in base_args if a.startswith("--")]
        inputs = [self.input_dir] if self.input_dir else [a for a in base_args if not a.startswith("--")]
        return overridden(flag_args, overrides + list(self.extra_flags)) + inputs


def build(request: ColorizeRequest) -> list:
    """The Indexed Job `colorize` creates."""
    return [request.task_job(MANIFEST, request.client_args)]
