"""`python -m trainer.launch`: start, watch and stop training runs on Kubernetes without editing YAML.

    submit --image=IMG [--name=RUN] [--workers=N] [--gpus=G] [--kind=job|tfjob] [--dry_run] ...
    status RUN | logs RUN | wait RUN | delete RUN
    promote VERSION --image_dir=HELD_OUT [--wait] | rollback [--wait]   (serving; trainer/launch_serving.py)
    prepare --image=IMG --tasks=N [--input_dir=gs://...] [--output_dir=gs://...]   (trainer/launch_prepare.py)

`submit` loads the manifests in k8s/ (the same ones `kubectl apply` uses), applies the overrides,
resolves a tag-only --image to its digest, creates the objects, waits for the pods to be scheduled
(a Spot node may take minutes to scale up), streams the chief's log (again after each restart), and
exits with the run's outcome: 0 when it succeeded, 1 with the failure reason otherwise. One worker is
the single-node Job (k8s/job.yaml); more are the Indexed Job + headless Service
(k8s/components/multinode/) or, with --kind=tfjob, a Kubeflow TFJob. They need the namespace, the
ServiceAccount and the colorizer-config ConfigMap of a configured overlay (`kubectl apply -k
k8s/overlays/gke`, docs/KUBERNETES.md).
"""

import argparse
import sys
import time

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from trainer import launch_prepare, launch_serving
from trainer.launch_manifests import (CHIEF_SELECTOR, PATH_FLAGS, TFJOB, LaunchError, UsageError, build, check_args,
                                      manifest_dir, pinned_image)


def api_client(context):
    """An ApiClient from ~/.kube/config (or $KUBECONFIG), else the in-cluster service account."""
    try:
        return config.new_client_from_config(context=context)
    except config.ConfigException as exc:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            raise LaunchError(f"no Kubernetes configuration: {exc}") from None


def call(what, fn, *args, **kwargs):
    """Runs one API call; an HTTP error becomes a one-line LaunchError naming what failed."""
    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        message = exc.reason
        try:
            message = yaml.safe_load(exc.body).get("message", message)
        except (AttributeError, TypeError, yaml.YAMLError):
            pass
        raise LaunchError(f"{what}: HTTP {exc.status}: {message}") from None


def create(api, objects):
    """Creates the Job (or TFJob), then the headless Service owned by the Job so deleting it cleans up."""
    batch, core, custom = client.BatchV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
    owner = None
    for obj in objects:
        ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
        if kind == "Job":
            created = call(f"creating Job {name}", batch.create_namespaced_job, ns, obj)
            owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid}
        elif kind == "TFJob":
            call(f"creating TFJob {name}", custom.create_namespaced_custom_object, *TFJOB[:2], ns, TFJOB[2], obj)
        else:
            obj["metadata"]["ownerReferences"] = [owner] if owner else []
            call(f"creating {kind} {name}", core.create_namespaced_service, ns, obj)


def find_kind(api, ns, name):
    """'Job' or 'TFJob', whichever exists under that name."""
    for kind in ("Job", "TFJob"):
        try:
            read(api, kind, ns, name)
            return kind
        except LaunchError as exc:
            if "HTTP 404" not in str(exc):
                raise
    raise LaunchError(f"no Job or TFJob named {name} in namespace {ns}")


def read(api, kind, ns, name):
    """The object as a plain dict (status included)."""
    if kind == "Job":
        job = call(f"reading Job {name}", client.BatchV1Api(api).read_namespaced_job_status, name, ns)
        return api.sanitize_for_serialization(job)
    return call(f"reading TFJob {name}", client.CustomObjectsApi(api).get_namespaced_custom_object,
                TFJOB[0], TFJOB[1], ns, TFJOB[2], name)


def outcome(api, kind, ns, name):
    """None while running, else (succeeded, reason): Job Complete/Failed, TFJob Succeeded/Failed."""
    for cond in read(api, kind, ns, name).get("status", {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond["type"] in ("Complete", "Succeeded"):
            return True, cond.get("message", "")
        if cond["type"] == "Failed":
            return False, f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
    return None


def chief_pod(api, kind, ns, name, skip=()):
    """The newest pod of worker 0 (index 0 of an Indexed Job), ignoring pods named in skip."""
    pods = call(f"listing pods of {name}", client.CoreV1Api(api).list_namespaced_pod, ns,
                label_selector=CHIEF_SELECTOR[kind].format(name=name)).items
    pods = [p for p in pods if p.metadata.name not in skip and
            (p.metadata.labels or {}).get("batch.kubernetes.io/job-completion-index", "0") == "0"]
    return max(pods, key=lambda p: p.metadata.creation_timestamp or 0, default=None)


def pending_reason(pod):
    for cond in pod.status.conditions or []:
        if cond.type == "PodScheduled" and cond.status != "True":
            return cond.message or cond.reason or "unschedulable"
    waiting = [s.state.waiting for s in pod.status.container_statuses or [] if s.state and s.state.waiting]
    return f"{waiting[0].reason}: {waiting[0].message}" if waiting else f"pod is {pod.status.phase}"


def stream_log(api, ns, pod, out):
    """Copies a pod's log to out as it is written, until the container ends."""
    response = call(f"reading the log of {pod}", client.CoreV1Api(api).read_namespaced_pod_log, pod, ns,
                    follow=True, _preload_content=False)
    for chunk in response.stream(4096):
        out.write(chunk.decode("utf-8", "replace"))
        out.flush()
    response.release_conn()


def describe(api, kind, ns, name):
    obj = read(api, kind, ns, name)
    status = obj.get("status", {})
    lines = [f"{kind} {ns}/{name}"]
    counts = {k: status[k] for k in ("active", "ready", "succeeded", "failed") if status.get(k)}
    lines += [f"  {k}: {v}" for k, v in counts.items()]
    for cond in status.get("conditions") or []:
        lines.append(f"  {cond['type']}={cond['status']} {cond.get('reason', '')} {cond.get('message', '')}".rstrip())
    pods = call(f"listing pods of {name}", client.CoreV1Api(api).list_namespaced_pod, ns,
                label_selector=CHIEF_SELECTOR[kind].split(",")[0].format(name=name)).items
    lines += [f"  pod {p.metadata.name}: {p.status.phase}" for p in pods]
    return "\n".join(lines)


def delete(api, kind, ns, name):
    """Deletes the run with its pods (and, through its owner reference, the headless Service)."""
    body = client.V1DeleteOptions(propagation_policy="Background")
    if kind == "Job":
        call(f"deleting Job {name}", client.BatchV1Api(api).delete_namespaced_job, name, ns, body=body)
    else:
        call(f"deleting TFJob {name}", client.CustomObjectsApi(api).delete_namespaced_custom_object,
             TFJOB[0], TFJOB[1], ns, TFJOB[2], name, body=body)


def create_and_follow(args, api, objects, what: str) -> int:
    """Prints the objects (--dry_run), or creates them and follows the run unless --no_wait."""
    if args.dry_run:
        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
        return 0
    create(api, objects)
    print(f"submitted {what}", file=sys.stderr)
    return 0 if args.no_wait else follow(api, args)


def submit(args, api):
    directory = manifest_dir(args.manifests)
    check_args(args)
    args.image = pinned_image(args.image)
    objects = build(args, directory)
    return create_and_follow(args, api, objects, f"{objects[0]['kind']} {args.namespace}/{args.name}")


def follow(api, args):
    """Waits for the chief to be scheduled, streams its log (again after each restart), returns the outcome."""
    deadline = time.monotonic() + args.schedule_timeout
    kind, streamed = find_kind(api, args.namespace, args.name), set()
    while True:
        result = outcome(api, kind, args.namespace, args.name)
        if result is not None:
            return report(result)
        pod = chief_pod(api, kind, args.namespace, args.name, skip=streamed)
        if pod is not None and pod.status.phase in ("Running", "Succeeded", "Failed"):
            streamed.add(pod.metadata.name)
            stream_log(api, args.namespace, pod.metadata.name, sys.stdout)
            deadline = time.monotonic() + args.schedule_timeout
            continue
        if time.monotonic() > deadline:
            why = pending_reason(pod) if pod is not None else "no pod was created (kubectl describe job)"
            print(f"error: the chief did not start within {args.schedule_timeout}s: {why}", file=sys.stderr)
            return 1
        time.sleep(args.poll_seconds)


def report(outcome):
    succeeded, message = outcome
    print(("succeeded" if succeeded else "failed") + (f": {message}" if message else ""), file=sys.stderr)
    return 0 if succeeded else 1


def command_for_name(args, api):
    """status, logs, wait, delete: the run's kind (Job or TFJob) is looked up, not asked for."""
    kind = find_kind(api, args.namespace, args.name)
    if args.command == "delete":
        delete(api, kind, args.namespace, args.name)
        print(f"deleted {kind} {args.namespace}/{args.name}")
        return 0
    if args.command == "status":
        print(describe(api, kind, args.namespace, args.name))
        return 0
    if args.command == "logs":
        pod = chief_pod(api, kind, args.namespace, args.name)
        if pod is None:
            raise LaunchError(f"{args.name} has no pod yet")
        stream_log(api, args.namespace, pod.metadata.name, sys.stdout)
        return 0
    return follow(api, args)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input in one line (and exit code 2) instead of usage + error."""

    def error(self, message):
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def parser():
    p = OneLineParser(prog="python -m trainer.launch", description=__doc__.split("\n")[0])
    p.add_argument("--namespace", default="colorizer")
    p.add_argument("--context", help="kubeconfig context (default: the current one; in a pod: in-cluster)")
    p.add_argument("--schedule_timeout", type=int, default=1800, help="seconds the chief may stay Pending")
    p.add_argument("--poll_seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    s = sub.add_parser("submit", help="create a training run and follow it")
    s.add_argument("--image", required=True, help="trainer image, REGION-docker.pkg.dev/PROJECT/colorizer/trainer:TAG "
                   "or ...@sha256:DIGEST; a tag is resolved to its digest, so every restarted worker runs the same code")
    s.add_argument("--name", default=time.strftime("colorizer-%Y%m%d-%H%M%S"), help="run name (also the Job's)")
    s.add_argument("--workers", type=int, default=1, help="nodes; 1: single-node Job, >1: Indexed Job or TFJob")
    s.add_argument("--gpus", type=int, default=1, help="GPUs per worker (0: CPU only)")
    s.add_argument("--kind", choices=("job", "tfjob"), default="job", help="multi-node flavour")
    s.add_argument("--cpu", help="CPU request and limit per worker, e.g. 8")
    s.add_argument("--memory", help="memory request and limit per worker, e.g. 32Gi")
    s.add_argument("--spot", action="store_true", help="run on GKE Spot VMs")
    s.add_argument("--max_hours", type=float, help="fail the run after this long (activeDeadlineSeconds; "
                   "default: the manifest's 72 h), the backstop for preemptions that never end")
    for flag in PATH_FLAGS:
        s.add_argument(f"--{flag}", help="default: the colorizer-config ConfigMap's value")
    s.add_argument("--arg", action="append", help="extra trainer flag, e.g. --arg=--epochs=50 (repeatable)")
    s.add_argument("--manifests", help="folder holding job.yaml and components/ (default: the repository's k8s/)")
    s.add_argument("--dry_run", action="store_true", help="print the objects instead of creating them")
    s.add_argument("--no_wait", action="store_true", help="return once created")
    for name in ("status", "logs", "wait", "delete"):
        sub.add_parser(name).add_argument("name")
    launch_serving.add_parsers(sub)
    launch_prepare.add_parser(sub)
    return p


def main(argv, api=None):
    """Runs one command; `api` (a kubernetes ApiClient) is injected by tests, else read from kubeconfig."""
    args = parser().parse_args(argv)
    try:
        if args.command == "submit" and args.dry_run:
            return submit(args, None)
        if args.command == "prepare":
            return launch_prepare.run(args, None if args.dry_run else api or api_client(args.context), create_and_follow)
        api = api or api_client(args.context)
        if args.command in ("promote", "rollback"):
            cluster = launch_serving.Cluster(api, args.namespace, call)
            return (launch_serving.run_promote if args.command == "promote" else launch_serving.run_rollback)(cluster, args)
        return submit(args, api) if args.command == "submit" else command_for_name(args, api)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run():
    """Console-script entry point (colorizer-launch)."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
