"""`python -m trainer.launch`: start, watch and stop training runs on Kubernetes without editing YAML.

    submit --image=IMG [--name=RUN] [--workers=N] [--gpus=G] [--kind=job|tfjob] [--dry_run] ...
    status RUN | logs RUN | wait RUN | delete RUN
    promote VERSION --image_dir=HELD_OUT [--wait] | rollback [--wait]   (serving; trainer/cluster/serving.py)
    prepare --image=IMG --tasks=N [--input_dir=gs://...] [--output_dir=gs://...]   (cluster/prepare_job.py)
    colorize --image=IMG --tasks=N [--input_dir=gs://...] [--model=gs://...]   (cluster/colorize_job.py)
    serve-starter --export_dir=gs://BUCKET/export   (the starter as version 1; cluster/starter_export.py)

`submit` loads the manifests in k8s/ (the same ones `kubectl apply` uses; `pip install .` ships a
copy inside the package), applies the overrides, resolves a tag-only --image to its digest, creates
the objects, waits for the pods to be scheduled (a Spot node may take minutes to scale up), streams
the chief's log (again after each restart), and exits with the run's outcome: 0 when it succeeded, 1
with the failure reason otherwise. One worker is the single-node Job (k8s/job.yaml); more are the
Indexed Job + headless Service (k8s/components/multinode/) or, with --kind=tfjob, a Kubeflow TFJob.
They need the namespace, the ServiceAccount and the colorizer-config ConfigMap of a configured
overlay (`kubectl apply -k k8s/overlays/gke`, docs/KUBERNETES.md).
"""

import argparse
import sys
from typing import Any, Callable

import yaml
from kubernetes import client

from trainer.cluster import colorize_job as launch_colorize
from trainer.cluster import prepare_job as launch_prepare
from trainer.cluster import serving as launch_serving
from trainer.cluster import starter_export as launch_starter
from trainer.cluster import train_job as launch_train
from trainer.cluster.k8s import Watch, Workload, api_client, pod_name
from trainer.cluster.manifests import LaunchError, RunRequest, UsageError
from trainer.cluster.train_job import SubmitRequest, build


def start(
    request: RunRequest, objects: list, what: str, connect: Callable[[], client.ApiClient], watch: Watch
) -> int:
    """Prints the objects (--dry_run), or creates them and follows the run unless --no_wait."""
    if request.dry_run:
        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
        return 0
    workload = Workload.create(connect(), objects)
    print(f"submitted {what}", file=sys.stderr)
    return 0 if request.no_wait else workload.follow(watch)


def on_name(command: str, workload: Workload, watch: Watch) -> int:
    """status, logs, wait, delete on a run found by name."""
    if command == "delete":
        workload.delete()
        print(f"deleted {workload}")
        return 0
    if command == "status":
        print(workload.describe())
        return 0
    if command == "logs":
        pod = workload.chief_pod()
        if pod is None:
            raise LaunchError(f"{workload.name} has no pod yet")
        workload.stream_log(pod_name(pod), sys.stdout)
        return 0
    return workload.follow(watch)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input in one line (and exit code 2) instead of usage + error."""

    def error(self, message):
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> OneLineParser:
    p = OneLineParser(prog="python -m trainer.launch", description=__doc__.split("\n")[0])
    p.add_argument("--namespace", default="colorizer")
    p.add_argument("--context", help="kubeconfig context (default: the current one; in a pod: in-cluster)")
    p.add_argument("--schedule_timeout", type=int, default=1800, help="seconds the chief may stay Pending")
    p.add_argument("--poll_seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    launch_train.add_parser(sub)
    for name in ("status", "logs", "wait", "delete"):
        sub.add_parser(name).add_argument("name")
    launch_serving.add_parsers(sub)
    launch_prepare.add_parser(sub)
    launch_colorize.add_parser(sub)
    launch_starter.add_parser(sub)
    return p


# The Indexed Jobs of independent tasks: (their request, the Job it builds).
TASK_JOBS: dict[str, tuple[Any, Callable[[Any], list]]] = {
    "prepare": (launch_prepare.PrepareRequest, launch_prepare.build),
    "colorize": (launch_colorize.ColorizeRequest, launch_colorize.build),
}


def run_command(args: argparse.Namespace, connect: Callable[[], client.ApiClient]) -> int:
    """One parsed command; `connect()` gives the ApiClient, asked for only when the cluster is needed."""
    watch = Watch(args.schedule_timeout, args.poll_seconds)
    if args.command == "submit":
        submit = SubmitRequest.from_args(args)
        objects = build(submit)
        return start(
            submit, objects, f"{objects[0]['kind']} {submit.namespace}/{submit.name}", connect, watch
        )
    if args.command in TASK_JOBS:
        request_class, build_job = TASK_JOBS[args.command]
        request = request_class.from_args(args)
        what = f"Job {request.namespace}/{request.name} ({request.tasks} {args.command} tasks)"
        return start(request, build_job(request), what, connect, watch)
    if args.command == "serve-starter":
        return launch_starter.run(args)
    if args.command in ("promote", "rollback"):
        return launch_serving.run(args, launch_serving.Cluster(connect(), args.namespace))
    return on_name(args.command, Workload.find(connect(), args.namespace, args.name), watch)


def main(argv, api=None) -> int:
    """Runs one command; `api` (a kubernetes ApiClient) is injected by tests, else read from kubeconfig."""
    args = parser().parse_args(argv)
    try:
        return run_command(args, lambda: api or api_client(args.context))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run():
    """Console-script entry point (colorizer-launch)."""
    sys.exit(main(sys.argv[1:]))
