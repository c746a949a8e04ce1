"""The Kubernetes side of `trainer.launch`: the API client, one-line API errors, and a submitted run
(a Job or a TFJob) with its pods, chief log and deletion. The command itself is trainer/cluster/launch.py.
"""

import dataclasses
import json
import re
import sys
import time
from typing import Optional

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from trainer.cluster.manifests import CHIEF_SELECTOR, TFJOB_GROUP, TFJOB_PLURAL, TFJOB_VERSION, LaunchError


def api_client(context: Optional[str]) -> client.ApiClient:
    """An ApiClient from ~/.kube/config (or $KUBECONFIG), else the in-cluster service account."""
    try:
        return config.new_client_from_config(context=context)
    except config.ConfigException as exc:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            raise LaunchError(f"no Kubernetes configuration: {exc}") from None


def call(what: str, fn, *args, **kwargs):
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


@dataclasses.dataclass(frozen=True)
class Watch:
    """How a run is followed: how long its chief may stay Pending, and how often its state is read."""

    schedule_timeout: float
    poll_seconds: float


class Workload:
    """A submitted run, a Job or a TFJob, on the cluster: its state, its chief's log, its deletion."""

    def __init__(self, api: client.ApiClient, kind: str, namespace: str, name: str):
        self.api, self.kind, self.namespace, self.name = api, kind, namespace, name
        self.batch, self.core = client.BatchV1Api(api), client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    def find(cls, api: client.ApiClient, namespace: str, name: str) -> "Workload":
        """The Job or the TFJob named `name`, whichever exists: commands on a name don't ask for its kind."""
        for kind in ("Job", "TFJob"):
            workload = cls(api, kind, namespace, name)
            try:
                workload.read()
                return workload
            except LaunchError as exc:
                if "HTTP 404" not in str(exc):
                    raise
        raise LaunchError(f"no Job or TFJob named {name} in namespace {namespace}")

    @classmethod
    def create(cls, api: client.ApiClient, objects: list) -> "Workload":
        """Creates the Job (or TFJob), then the headless Service owned by the Job so deleting it cleans up."""
        run = objects[0]["metadata"]
        workload, owner = cls(api, objects[0]["kind"], run["namespace"], run["name"]), None
        for obj in objects:
            ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
            if kind == "Job":
                created = call(f"creating Job {name}", workload.batch.create_namespaced_job, ns, obj)
                owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid}
            elif kind == "TFJob":
                call(
                    f"creating TFJob {name}",
                    workload.custom.create_namespaced_custom_object,
                    TFJOB_GROUP,
                    TFJOB_VERSION,
                    ns,
                    TFJOB_PLURAL,
                    obj,
                )
            else:
                obj["metadata"]["ownerReferences"] = [owner] if owner else []
                call(f"creating {kind} {name}", workload.core.create_namespaced_service, ns, obj)
        return workload

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def read(self) -> dict:
        """The object as a plain dict (status included)."""
        if self.kind == "Job":
            job = call(
                f"reading Job {self.name}", self.batch.read_namespaced_job_status, self.name, self.namespace
            )
            return self.api.sanitize_for_serialization(job)
        return call(
            f"reading TFJob {self.name}",
            self.custom.get_namespaced_custom_object,
            TFJOB_GROUP,
            TFJOB_VERSION,
            self.namespace,
            TFJOB_PLURAL,
            self.name,
        )

    def outcome(self) -> Optional[tuple]:
        """None while running, else (succeeded, reason): Job Complete/Failed, TFJob Succeeded/Failed."""
        for cond in self.read().get("status", {}).get("conditions") or []:
            if cond.get("status") != "True":
                continue
            if cond["type"] in ("Complete", "Succeeded"):
                return True, cond.get("message", "")
            if cond["type"] == "Failed":
                return False, f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
        return None

    def pods(self, selector: str) -> list:
        return call(
            f"listing pods of {self.name}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=selector.format(name=self.name),
        ).items

    def chief_pod(self, skip=()) -> Optional[client.V1Pod]:
        """The newest pod of worker 0 (index 0 of an Indexed Job), ignoring pods named in skip."""
        pods = [
            p
            for p in self.pods(CHIEF_SELECTOR[self.kind])
            if p.metadata.name not in skip
            and (p.metadata.labels or {}).get("batch.kubernetes.io/job-completion-index", "0") == "0"
        ]
        return max(pods, key=lambda p: p.metadata.creation_timestamp or 0, default=None)

    def stream_log(self, pod: str, out) -> None:
        """Copies a pod's log to out as it is written, until the container ends."""
        response = call(
            f"reading the log of {pod}",
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            follow=True,
            _preload_content=False,
        )
        for chunk in response.stream(4096):
            out.write(chunk.decode("utf-8", "replace"))
            out.flush()
        response.release_conn()

    def describe(self) -> str:
        """`status`: the counts and conditions of the run, and the phase of each of its pods."""
        status = self.read().get("status", {})
        lines = [str(self)]
        counts = {k: status[k] for k in ("active", "ready", "succeeded", "failed") if status.get(k)}
        lines += [f"  {k}: {v}" for k, v in counts.items()]
        for cond in status.get("conditions") or []:
            line = f"  {cond['type']}={cond['status']} {cond.get('reason', '')} {cond.get('message', '')}"
            lines.append(line.rstrip())
        pods = self.pods(
            CHIEF_SELECTOR[self.kind].split(",")[0]
        )  # every pod of the run, not only the chief's
        lines += [f"  pod {pod_name(p)}: {pod_phase(p) or 'Pending'}" for p in pods]
        chief = self.chief_pod()
        if chief is not None and pod_phase(chief) in ("Running", "Succeeded", "Failed"):
            found = self._progress(pod_name(chief))
            lines += [f"  progress ({pod_name(chief)}): {found}"] if found else []
        return "\n".join(lines)

    def _progress(self, pod: str) -> Optional[str]:
        """The latest epoch line of a pod's log tail; None when there is none or no log to read."""
        try:
            tail = call(
                f"reading the log of {pod}",
                self.core.read_namespaced_pod_log,
                pod,
                self.namespace,
                tail_lines=PROGRESS_LOG_LINES,
            )
        except LaunchError:  # e.g. the container is still starting: status says what it can
            return None
        return progress_from_log(tail or "")

    def delete(self) -> None:
        """Deletes the run with its pods (and, through its owner reference, the headless Service)."""
        body = client.V1DeleteOptions(propagation_policy="Background")
        if self.kind == "Job":
            call(
                f"deleting Job {self.name}",
                self.batch.delete_namespaced_job,
                self.name,
                self.namespace,
                body=body,
            )
        else:
            call(
                f"deleting TFJob {self.name}",
                self.custom.delete_namespaced_custom_object,
                TFJOB_GROUP,
                TFJOB_VERSION,
                self.namespace,
                TFJOB_PLURAL,
                self.name,
                body=body,
            )

    def follow(self, watch: Watch) -> int:
        """Waits for the chief to be scheduled, streams its log (again after each restart).

        Returns the run's outcome as an exit code (`report`), or 1 if the chief isn't scheduled in time.
        """
        deadline = time.monotonic() + watch.schedule_timeout
        streamed: set[str] = set()  # the chief pods whose log has been copied: each is copied once
        while True:
            result = self.outcome()
            if result is not None:
                return report(*result)
            pod = self.chief_pod(skip=streamed)
            if pod is not None and pod_phase(pod) in ("Running", "Succeeded", "Failed"):
                name = pod_name(pod)
                streamed.add(name)
                self.stream_log(name, sys.stdout)
                deadline = time.monotonic() + watch.schedule_timeout
                continue
            if time.monotonic() > deadline:
                why = pending_reason(pod) if pod is not None else "no pod was created (kubectl describe job)"
                print(
                    f"error: the chief did not start within {watch.schedule_timeout}s: {why}", file=sys.stderr
                )
                return 1
            time.sleep(watch.poll_seconds)


def report(succeeded: bool, message: str) -> int:
    """Prints the run's outcome; its exit code: 0 when it succeeded, 1 otherwise."""
    print(("succeeded" if succeeded else "failed") + (f": {message}" if message else ""), file=sys.stderr)
    return 0 if succeeded else 1


def pod_name(pod: client.V1Pod) -> str:
    """A pod's name: the API server always sets it, though the client's models type every field Optional."""
    name = pod.metadata.name if pod.metadata is not None else None
    if not name:
        raise LaunchError("the cluster returned a pod without a name")
    return name


def pod_phase(pod: client.V1Pod) -> Optional[str]:
    """A pod's phase; None while the pod has no status yet (the client's model then has status=None)."""
    return pod.status.phase if pod.status is not None else None


PROGRESS_LOG_LINES = 200  # of the chief's log read by `status` (a progress line comes every minute)
# The trainer's epoch and in-epoch lines (trainer/train/actions.py), as text or inside a JSON line.
_PROGRESS = re.compile(r"epoch (\d+)/(\d+) step (\d+)(?:/\d+)?.*?(?:(epoch )?ETA ([\d.]+ (?:s|min|h)))?\"?$")


def progress_from_log(text: str) -> Optional[str]:
    """The run's latest epoch, step and ETA from the trainer's log lines (text or JSON), else None."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                line = json.loads(line).get("message", "")
            except ValueError:
                continue
        match = _PROGRESS.search(line)
        if match:
            epoch, epochs, step, within, eta = match.groups()
            ending = f"; {'this epoch' if within else 'the run'} ends in about {eta}" if eta else ""
            return f"epoch {epoch}/{epochs}, step {step}{ending}"
    return None


def pending_reason(pod: client.V1Pod) -> str:
    """Why a pod hasn't started: unschedulable (no node fits yet), or its container's waiting reason."""
    status = pod.status
    if status is None:
        return "the pod has no status yet (kubectl describe pod)"
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status != "True":
            return cond.message or cond.reason or "unschedulable"
    waiting = [s.state.waiting for s in status.container_statuses or [] if s.state and s.state.waiting]
    return f"{waiting[0].reason}: {waiting[0].message}" if waiting else f"pod is {status.phase}"
