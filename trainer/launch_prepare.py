"""`python -m trainer.launch prepare`: photos in a bucket -> shards in the bucket, as a cluster job.

    prepare --image=IMG --tasks=N [--input_dir=gs://B/photos/] [--output_dir=gs://B/data] [--num_shards=S]
            [--holdout_fraction=F] [--name=RUN] [--cpu=C] [--memory=M] [--spot] [--arg=--recursive] [--dry_run]

Builds the Indexed Job of k8s/components/prepare/prepare.yaml (the manifest `kubectl apply -k
k8s/overlays/prepare` uses) with N tasks, creates it, streams task 0's log (again after each restart)
and exits 0 when every task succeeded, 1 otherwise. Resubmitting a name with the same flags resumes
that run; the last task to finish writes the manifests (trainer/prepare_tasks.py).
"""

import os
import re
import time


from trainer.launch_manifests import NAME, UsageError, _renamed, deadline, label, load_objects, manifest_dir, pinned_image

PATH_FLAGS = ("input_dir", "output_dir")
VALUE_FLAGS = ("num_shards", "holdout_fraction")


def add_parser(sub):
    p = sub.add_parser("prepare", help="prepare data in the cluster: an Indexed Job of --tasks prepare tasks")
    p.add_argument("--image", required=True, help="trainer image (it holds trainer.prepare); a tag is resolved to "
                   "its digest")
    p.add_argument("--name", default=time.strftime("colorizer-prepare-%Y%m%d-%H%M%S"),
                   help="run name (the Job's): the same name and flags resume a run")
    p.add_argument("--tasks", type=int, default=4, help="pods, each preparing 1/N of the photos")
    for flag in PATH_FLAGS:
        p.add_argument(f"--{flag}", help=f"default: the colorizer-config ConfigMap's "
                       f"{'PHOTOS_DIR' if flag == 'input_dir' else 'DATA_DIR'}")
    p.add_argument("--num_shards", type=int, help="training shards of all tasks together (default: the manifest's "
                   "256); at least 16 per training worker, and at least --tasks")
    p.add_argument("--holdout_fraction", type=float, help="default: the manifest's 0.05")
    p.add_argument("--cpu", help="CPU request and limit per task (also its decode processes), e.g. 4")
    p.add_argument("--memory", help="memory request and limit per task, e.g. 8Gi")
    p.add_argument("--spot", action="store_true", help="run on GKE Spot VMs (a preempted task redoes its part)")
    p.add_argument("--max_hours", type=float, help="fail the Job after this long (default: the manifest's 24 h)")
    p.add_argument("--arg", action="append", help="extra trainer.prepare flag, e.g. --arg=--recursive (repeatable)")
    p.add_argument("--manifests", help="folder holding job.yaml and components/ (default: the repository's k8s/)")
    p.add_argument("--dry_run", action="store_true", help="print the Job instead of creating it")
    p.add_argument("--no_wait", action="store_true", help="return once created")


def prepare_flags():
    """trainer.prepare's flags, defined apart from the process-wide ones (its --seed is also the trainer's)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # trainer.prepare imports TensorFlow: keep it quiet
    from absl import flags

    from trainer.prepare import define_flags

    values = flags.FlagValues()
    define_flags(values)
    return values


def check(args):
    """Validates what the cluster would only reject later, or never (a task with no shard of its own)."""
    if not NAME.match(args.name):
        raise UsageError(f"--name={args.name!r}: lowercase letters, digits and '-', at most 40 characters")
    if args.tasks < 1:
        raise UsageError(f"--tasks={args.tasks}: must be >= 1")
    if (args.num_shards or 256) < args.tasks:
        raise UsageError(f"--num_shards={args.num_shards or 256} is fewer than --tasks={args.tasks}: each task "
                         "writes shards of its own")
    if args.max_hours is not None and not args.max_hours > 0:
        raise UsageError(f"--max_hours={args.max_hours}: must be > 0")
    known = prepare_flags()
    for arg in args.arg or []:
        match = re.match(r"^--(?:no)?([a-z_0-9]+)(=.*)?$", arg)
        if not match or match.group(1) not in known or match.group(1) in ("num_tasks", "task_index", "run_name"):
            raise UsageError(f"--arg={arg!r}: not a flag of python -m trainer.prepare that a task may set")


def prepare_args(args, base_args):
    """The manifest's flags with the command line's replacing same-named ones."""
    overrides = [f"--{flag}={getattr(args, flag)}" for flag in PATH_FLAGS + VALUE_FLAGS
                 if getattr(args, flag) is not None]
    if args.cpu:
        overrides.append(f"--workers={max(1, int(float(args.cpu)))}")
    overrides += args.arg or []
    names = {o.split("=", 1)[0].replace("--no", "--", 1) for o in overrides}
    return [a for a in base_args if a.split("=", 1)[0].replace("--no", "--", 1) not in names] + overrides


def build(args, directory):
    """The Indexed Job `prepare` creates."""
    [job] = [d for d in load_objects(directory, "components/prepare/prepare.yaml") if d["kind"] == "Job"]
    job = _renamed(job, args, args.name)
    spec = job["spec"]["template"]["spec"]
    label(job, job["spec"]["template"], args.name)
    job["spec"]["completions"] = job["spec"]["parallelism"] = args.tasks
    deadline(job["spec"], args)
    [container] = spec["containers"]
    container["image"] = args.image
    container["args"] = prepare_args(args, container["args"])
    for env in container["env"]:
        if env["name"] == "COLORIZER_NUM_TASKS":
            env["value"] = str(args.tasks)
    for kind in ("requests", "limits"):
        for key, value in (("cpu", args.cpu), ("memory", args.memory)):
            if value:
                container["resources"][kind][key] = value
    if args.spot:
        spec.setdefault("nodeSelector", {})["cloud.google.com/gke-spot"] = "true"
        spec.setdefault("tolerations", []).append(
            {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"})
    return [job]


def run(args, api, create_and_follow):
    """Builds the Job, then `create_and_follow` (trainer.launch's) prints or creates and follows it."""
    directory = manifest_dir(args.manifests)
    check(args)
    args.image = pinned_image(args.image)
    return create_and_follow(args, api, build(args, directory),
                             f"Job {args.namespace}/{args.name} ({args.tasks} prepare tasks)")
