"""A small model of what the cluster's controllers do with our RENDERED manifests, for offline tests.

Each rule cites where it comes from, so a test of the model against the documentation's own examples
(tests/test_controllers.py) checks the model, and a test on our manifests checks the manifests:

* Job controller, podFailurePolicy: kubernetes.io/docs/concepts/workloads/controllers/job/ "Pod
  failure policy" and "Backoff limit per index"; kubernetes/kubernetes
  pkg/controller/job/pod_failure_policy.go:35 matchPodFailurePolicy (rules in order, the first match
  decides; an exit-code rule matches a terminated container with a non-zero code, optionally by
  name; Ignore does not count, Count/FailIndex/FailJob and no match count) and job_controller.go
  (the Job fails once counted failures exceed backoffLimit, an index once its failures exceed
  backoffLimitPerIndex, and the Job once failed indexes exceed maxFailedIndexes or, at the end,
  any index failed; activeDeadlineSeconds counts from the Job's start).
* Kubeflow training-operator v1.9.0, restartPolicy ExitCode: pkg/util/train/train_util.go:24-26
  (retryable iff exitCode >= 128) and pkg/controller.v1/common/pod.go:340-372 (the code is read from
  the container named `tensorflow`, else it stays 0xbeef, i.e. retryable; retryable pods are
  deleted and recreated, others fail the TFJob).
* kubelet probes: kubernetes/kubernetes pkg/kubelet/prober/worker.go (run: one probe at once, then
  one per periodSeconds; doProbe: nothing before initialDelaySeconds, "Disable other probes until
  container has started", a startup or liveness result of failureThreshold consecutive failures
  restarts the container, readiness starts as Failure and turns Ready after successThreshold).
* TF Serving 2.20.0 start-up: tensorflow/serving model_servers/server.cc:332 runs ServerCore::Create,
  which waits without a timeout (server_core.h:218) for the first version to load, and only then
  starts gRPC (:417) and HTTP (:446); file_system_storage_path_source.cc polls the base path at start
  and every --file_system_poll_wait_seconds, a missing base path being only a logged error (:257-262,
  :414-419). With --model_config_file (the promotion gate), an empty config starts the server with no
  model at once (server_core.cc:497-501), the file is re-read every --model_config_file_poll_wait_seconds
  (server.cc:337-348), and a newly listed version is found at the next file-system poll
  (FileSystemStoragePathSource::UpdateConfig does not poll).
"""

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[1] / "k8s"
ACTIONS = ("Ignore", "Count", "FailJob", "FailIndex")


@dataclasses.dataclass(frozen=True)
class PodFailure:
    """One failed pod: its container's exit code (None: never terminated, e.g. the node vanished)."""

    exit_code: int | None
    disruption_target: bool = False
    container: str = "trainer"
    index: int = 0


def _matches(rule, pod):
    """Whether one podFailurePolicy rule matches the failed pod (pod_failure_policy.go)."""
    if "onExitCodes" in rule:
        req = rule["onExitCodes"]
        if pod.exit_code in (None, 0) or req.get("containerName", pod.container) != pod.container:
            return False
        return (pod.exit_code in req["values"]) == (req["operator"] == "In")
    return pod.disruption_target and any(
        c["type"] == "DisruptionTarget" and c.get("status", "True") == "True" for c in rule["onPodConditions"]
    )


class JobController:
    """One rendered batch/v1 Job: podFailurePolicy, backoffLimit, per-index limits and the deadline."""

    def __init__(self, job: dict):
        spec = job["spec"]
        self.rules = (spec.get("podFailurePolicy") or {}).get("rules", [])
        self.per_index = spec.get("backoffLimitPerIndex")
        self.max_failed_indexes = spec.get("maxFailedIndexes")
        self.backoff_limit = spec.get("backoffLimit", 2**31 - 1 if self.per_index is not None else 6)
        self.deadline = spec.get("activeDeadlineSeconds")
        if any(r["action"] == "FailIndex" for r in self.rules) and self.per_index is None:
            raise ValueError("FailIndex needs backoffLimitPerIndex (the API server rejects it otherwise)")
        self.counted, self.failed_pods, self.elapsed = 0, 0, 0.0
        self.index_failures, self.failed_indexes = Counter(), set()
        self.failed, self.reason = False, None

    def action(self, pod: PodFailure) -> str:
        """The first matching rule's action, else Count (matchPodFailurePolicy)."""
        return next((r["action"] for r in self.rules if _matches(r, pod)), "Count")

    def fail(self, pod: PodFailure) -> str:
        """Applies one failed pod; returns the action taken and updates the counters and outcome."""
        act = self.action(pod)
        if self.failed:
            return act
        self.failed_pods += 1
        if act == "FailJob":
            return self._finish("PodFailurePolicy", act)
        if act == "Ignore":
            return act
        self.counted += 1
        if self.per_index is not None:
            self.index_failures[pod.index] += 1
            if act == "FailIndex" or self.index_failures[pod.index] > self.per_index:
                self.failed_indexes.add(pod.index)
            if self.max_failed_indexes is not None and len(self.failed_indexes) > self.max_failed_indexes:
                return self._finish("MaxFailedIndexesExceeded", act)
        if self.counted > self.backoff_limit:
            return self._finish("BackoffLimitExceeded", act)
        return act

    def advance(self, seconds: float):
        """Lets time pass since the Job started: past activeDeadlineSeconds the Job fails."""
        self.elapsed += seconds
        if self.deadline is not None and self.elapsed >= self.deadline and not self.failed:
            self._finish("DeadlineExceeded", None)

    def all_indexes_done(self):
        """Every index has finished (succeeded or failed): any failed index fails the Job."""
        if self.failed_indexes and not self.failed:
            self._finish("FailedIndexes", None)

    def _finish(self, reason, act):
        self.failed, self.reason = True, reason
        return act


class IndexedJobLife:
    """Each index of an Indexed Job over its whole life, on top of `JobController`.

    A pod that exits 0 completes its index for good: the Job controller never recreates a succeeded
    index (job_controller.go, indexed completion), and the pod, terminal, leaves the headless
    Service's DNS (the EndpointSlice controller lists only the addresses of pods not terminated). A
    failed pod is judged by the podFailurePolicy; unless that fails its index or the Job, a
    replacement runs and rejoins the DNS.
    """

    def __init__(self, job: dict):
        self.controller = JobController(job)
        self.container = job["spec"]["template"]["spec"]["containers"][0]["name"]
        self.state = {i: "running" for i in range(job["spec"]["completions"])}

    def exit(self, index: int, code: int, disruption_target: bool = False) -> str:
        """The index's pod exits with `code`; returns the index's new state."""
        if code == 0:
            self.state[index] = "succeeded"
        else:
            self.controller.fail(PodFailure(code, disruption_target, self.container, index))
            failed = self.controller.failed or index in self.controller.failed_indexes
            self.state[index] = "failed" if failed else "running"  # else: a replacement pod
        return self.state[index]

    def in_dns(self, index: int) -> bool:
        return self.state[index] == "running"


def tfjob_restarts(tfjob: dict, replica_type: str, exit_code: int) -> bool:
    """Whether the training-operator recreates a failed pod of this replica type (True) or fails the TFJob."""
    spec = tfjob["spec"]["tfReplicaSpecs"][replica_type]
    containers = [c["name"] for c in spec["template"]["spec"]["containers"]]
    if "tensorflow" not in containers:
        raise ValueError("the operator reads the exit code of the container named 'tensorflow' only")
    policy = spec.get("restartPolicy", "Never")
    if policy == "ExitCode":
        return exit_code >= 128
    return policy in ("OnFailure", "Always")


@dataclasses.dataclass(frozen=True)
class ProbeOutcome:
    """When (seconds after the container started) the kubelet restarted it, and when it became Ready."""

    restarted_at: float | None
    ready_at: float | None


def tf_serving_ports_open_at(version_at, poll_seconds, load_seconds, poll_phase=0.0):
    """When TF Serving opens its ports: the first poll at or after the version appears, plus the load."""
    if version_at is None:
        return None
    first_poll = poll_phase + max(0, math.ceil((version_at - poll_phase) / poll_seconds)) * poll_seconds
    return first_poll + load_seconds


def tf_serving_upload_available_at(
    upload, poll_seconds, load_seconds, poll_phase=0.0, retry_seconds=60.0, retries=5
):
    """When a version uploaded over `upload` = (start, end), saved_model.pb last, is AVAILABLE.

    A poll lists every object below the base path and takes the first path component as the
    version (file_system_storage_path_source.cc PollFileSystemForServable), so a poll during the
    upload finds the version. Its load fails without saved_model.pb and is retried every
    `retry_seconds`, `retries` times (loader_harness.cc Retry; main.cc --max_num_load_retries=5,
    --load_retry_interval_micros=60 s); then the version stays failed (None).
    """
    start, end = upload
    attempt = _next_tick(start, poll_seconds, poll_phase)
    for _ in range(retries + 1):
        if attempt >= end:
            return attempt + load_seconds
        attempt += retry_seconds
    return None


def _next_tick(t, period, phase):
    return phase + max(0, math.ceil((t - phase) / period)) * period


def tf_serving_gated_available_at(
    promoted_at, config_poll, fs_poll, load_seconds, propagation=0.0, phases=(0.0, 0.0)
):
    """Gated mode: when the promoted version is AVAILABLE. The kubelet projects the new ConfigMap after
    `propagation`, the next config poll reads it, the next file-system poll finds the version, then the
    load."""
    if promoted_at is None:
        return None
    read = _next_tick(promoted_at + propagation, config_poll, phases[0])
    return _next_tick(read, fs_poll, phases[1]) + load_seconds


def _probe_ticks(probe, phase, horizon):
    period = probe.get("periodSeconds", 10)
    return [phase + k * period for k in range(int((horizon - phase) // period) + 1)]


def simulate_probes(
    container: dict, ports_open_at: float | None, horizon: float, phases=(0.0, 0.0, 0.0), available_at="ports"
):
    """Runs the kubelet's readiness, startup and liveness workers (phases: their tick offsets) against a
    server whose probes all fail until ports_open_at (None: never) and succeed after. The readiness
    probe (model AVAILABLE) succeeds from available_at, by default when the ports open."""
    available_at = ports_open_at if available_at == "ports" else available_at
    # At one instant readiness runs before startup: the slower of the two orders, on purpose.
    kinds = ("readinessProbe", "startupProbe", "livenessProbe")
    events = sorted(
        (t, order, kind)
        for order, (kind, phase) in enumerate(zip(kinds, phases))
        if kind in container
        for t in _probe_ticks(container[kind], phase, horizon)
    )
    started, failures, ready_at = "startupProbe" not in container, Counter(), None
    for t, _, kind in events:
        probe = container[kind]
        if t < probe.get("initialDelaySeconds", 0) or (kind == "startupProbe") == started:
            continue
        opens = available_at if kind == "readinessProbe" else ports_open_at
        ok = opens is not None and t >= opens
        failures[kind] = 0 if ok else failures[kind] + 1
        if ok and kind == "startupProbe":
            started = True
        elif ok and kind == "readinessProbe" and ready_at is None:
            ready_at = t
        elif kind != "readinessProbe" and failures[kind] >= probe.get("failureThreshold", 3):
            return ProbeOutcome(restarted_at=t, ready_at=ready_at)
    return ProbeOutcome(restarted_at=None, ready_at=ready_at)


def kubectl():
    """The kubectl installed next to this Python (the test extras), else the one on PATH."""
    found = shutil.which(
        "kubectl", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if not found:
        raise FileNotFoundError("kubectl not found: pip install -e '.[test]'")
    return found


def render_overlay(name: str, k8s_dir=None) -> list[dict]:
    """`kubectl kustomize k8s/overlays/<name>`: the objects `kubectl apply -k` would send."""
    path = Path(k8s_dir or K8S) / "overlays" / name
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"kubectl kustomize {path}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]
