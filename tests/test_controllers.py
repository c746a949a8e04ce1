"""The controllers' documented behaviour (tests/controllers.py) applied to our rendered manifests.

First the model is held to its sources' own examples (kubernetes.io Job examples, the kubelet probe
docs, training-operator's unit test); then our manifests: serving waits a day for its first model and
turns Ready within a minute of it, the exit-code contract of trainer/errors.py holds in every Job and
TFJob, and every run has a deadline.
"""

import itertools

import pytest
import yaml

from tests.controllers import (
    K8S,
    IndexedJobLife,
    JobController,
    PodFailure,
    render_overlay,
    simulate_probes,
    tf_serving_gated_available_at,
    tf_serving_ports_open_at,
    tfjob_restarts,
)
from trainer.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_DIVERGED,
    EXIT_PEER_LOST,
    EXIT_TRANSIENT,
    EXIT_UNEXPECTED,
    PERMANENT_EXIT_CODES,
    RETRIABLE_EXIT_CODES,
)

TRAINING_OVERLAYS = ("dev", "gke", "gke-multinode")
DAY = 24 * 3600
LOAD_SECONDS = 20  # a generous time for TF Serving to load our ~10 MB SavedModel from GCS

# kubernetes.io/examples/controllers/job-pod-failure-policy-example.yaml (release-1.33)
DOCS_POLICY_EXAMPLE = """
spec:
  completions: 12
  parallelism: 3
  backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {containerName: main, operator: In, values: [42]}
    - action: Ignore
      onPodConditions: [{type: DisruptionTarget}]
"""
# kubernetes.io/examples/controllers/job-backoff-limit-per-index-example.yaml: even indexes exit 1
DOCS_PER_INDEX_EXAMPLE = (
    "spec: {completions: 10, parallelism: 3, completionMode: Indexed, "
    "backoffLimitPerIndex: 1, maxFailedIndexes: 5}"
)
# kubernetes.io/examples/controllers/job-backoff-limit-per-index-failindex.yaml:
# index 0 exits 1, index 1 exits 42
DOCS_FAILINDEX_EXAMPLE = """
spec:
  completions: 4
  parallelism: 2
  completionMode: Indexed
  backoffLimitPerIndex: 1
  backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailIndex
      onExitCodes: {containerName: main, operator: In, values: [42]}
"""


def test_docs_pod_failure_policy_example():
    """Exit 42 fails the Job at once; a disruption is not counted; other failures use up backoffLimit."""
    job = yaml.safe_load(DOCS_POLICY_EXAMPLE)
    assert JobController(job).fail(PodFailure(42, container="main")) == "FailJob"
    jc = JobController(job)
    assert jc.fail(PodFailure(137, disruption_target=True, container="main")) == "Ignore" and jc.counted == 0
    for _ in range(7):  # backoffLimit: 6, so the 7th counted failure fails the Job
        assert not jc.failed
        assert jc.fail(PodFailure(1, container="main")) == "Count"
    assert jc.failed and jc.reason == "BackoffLimitExceeded"
    assert JobController(job).fail(PodFailure(42, container="sidecar")) == "Count", "containerName must match"


def test_docs_backoff_limit_per_index_example():
    """Documented outcome: failedIndexes 0,2,4,6,8, 10 failed pods, all indexes run, the Job fails at the
    end."""
    jc = JobController(yaml.safe_load(DOCS_PER_INDEX_EXAMPLE))
    for index in range(0, 10, 2):
        assert jc.fail(PodFailure(1, container="example", index=index)) == "Count"
        assert index not in jc.failed_indexes, "one retry per index"
        jc.fail(PodFailure(1, container="example", index=index))
    assert jc.failed_indexes == {0, 2, 4, 6, 8} and jc.failed_pods == 10 and not jc.failed
    jc.all_indexes_done()
    assert jc.failed and jc.reason == "FailedIndexes"


def test_docs_failindex_example():
    """Documented outcome: index 0 retried once then failed, index 1 failed without retry:
    failedIndexes 0,1."""
    jc = JobController(yaml.safe_load(DOCS_FAILINDEX_EXAMPLE))
    assert jc.fail(PodFailure(42, container="main", index=1)) == "FailIndex"
    assert jc.fail(PodFailure(1, container="main", index=0)) == "Count" and jc.failed_indexes == {1}
    jc.fail(PodFailure(1, container="main", index=0))
    assert jc.failed_indexes == {0, 1} and jc.failed_pods == 3
    jc.all_indexes_done()
    assert jc.reason == "FailedIndexes"


def test_docs_startup_probe_example():
    """kubernetes.io "Protect slow starting containers": failureThreshold 30 x periodSeconds 10 gives an
    app at most 5 minutes to start; liveness takes over once the startup probe has succeeded."""
    container = {
        "startupProbe": {"failureThreshold": 30, "periodSeconds": 10},
        "livenessProbe": {"failureThreshold": 1, "periodSeconds": 10},
    }
    assert 290 <= simulate_probes(container, None, 3600).restarted_at <= 300
    assert simulate_probes(container, 250, 3600).restarted_at is None
    assert (
        simulate_probes(
            {"livenessProbe": {"failureThreshold": 1, "periodSeconds": 10}}, 250, 3600
        ).restarted_at
        == 0
    )


@pytest.mark.parametrize("code, retried", [(1, False), (2, False), (3, False), (130, True), (138, True)])
def test_training_operator_unit_test_cases(code, retried):
    """training-operator v1.9.0 pkg/util/train/train_util_test.go TestIsRetryableExitCode, through the
    model."""
    tfjob = {
        "spec": {
            "tfReplicaSpecs": {
                "Worker": {
                    "restartPolicy": "ExitCode",
                    "template": {"spec": {"containers": [{"name": "tensorflow"}]}},
                }
            }
        }
    }
    assert tfjob_restarts(tfjob, "Worker", code) is retried


def serving_container(overlay="serve"):
    [deploy] = [d for d in render_overlay(overlay) if d["kind"] == "Deployment"]
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    return container


def poll_seconds(container):
    return int(
        next(a for a in container["args"] if a.startswith("--file_system_poll_wait_seconds=")).split("=")[1]
    )


@pytest.mark.parametrize("overlay", ["serve", "dev-serve"])
def test_serving_waits_a_day_for_its_first_model_without_a_restart(overlay):
    container = serving_container(overlay)
    for phases in [(0, 0, 0), (4.9, 2.5, 19.9)]:
        outcome = simulate_probes(container, ports_open_at=None, horizon=DAY + 60, phases=phases)
        assert outcome.restarted_at is None and outcome.ready_at is None


@pytest.mark.parametrize("overlay", ["serve", "dev-serve"])
def test_serving_is_ready_within_a_minute_of_the_first_version(overlay):
    container = serving_container(overlay)
    poll = poll_seconds(container)
    worst = 0
    for version_at, poll_phase, phases in itertools.product(
        [0, 7, 3600, 3600 + 0.1, DAY - 13],
        [0, poll / 2, poll - 0.1],
        [(0, 0, 0), (4.9, 0, 0), (0, 4.9, 0), (2.4, 3.7, 11)],
    ):
        ports_open = tf_serving_ports_open_at(version_at, poll, LOAD_SECONDS, poll_phase)
        outcome = simulate_probes(container, ports_open, horizon=version_at + 300, phases=phases)
        assert outcome.restarted_at is None
        worst = max(worst, outcome.ready_at - version_at)
    assert worst <= 60, f"Ready {worst:.1f} s after the first version appeared"


def flag(container, name):
    return int(next(a for a in container["args"] if a.startswith(f"--{name}=")).split("=")[1])


def test_gated_serving_waits_a_day_unready_for_its_first_promotion_without_a_restart():
    """The shipped empty model config: ports open at once, no model, so never Ready and never restarted."""
    container = serving_container("serve-gated")
    for phases in [(0, 0, 0), (4.9, 2.5, 19.9)]:
        outcome = simulate_probes(
            container, ports_open_at=1, horizon=DAY + 60, phases=phases, available_at=None
        )
        assert outcome.restarted_at is None and outcome.ready_at is None


def test_gated_serving_is_ready_within_a_minute_of_a_promotion():
    """From the launcher's ConfigMap write; its pod annotation makes the kubelet project it within seconds."""
    container = serving_container("serve-gated")
    config_poll, fs_poll = (
        flag(container, "model_config_file_poll_wait_seconds"),
        flag(container, "file_system_poll_wait_seconds"),
    )
    worst = 0
    for promoted_at, poll_phases, phases in itertools.product(
        [0, 7, 3600.1, DAY - 13],
        [(0, 0), (config_poll - 0.1, fs_poll - 0.1), (3, 7)],
        [(0, 0, 0), (4.9, 0, 0), (2.4, 3.7, 11)],
    ):
        available = tf_serving_gated_available_at(
            promoted_at, config_poll, fs_poll, LOAD_SECONDS, 5, poll_phases
        )
        outcome = simulate_probes(container, 1, promoted_at + 300, phases, available_at=available)
        assert outcome.restarted_at is None
        worst = max(worst, outcome.ready_at - promoted_at)
    assert worst <= 60, f"Ready {worst:.1f} s after the promotion"


def test_the_old_serving_probes_restarted_the_server_within_about_a_minute():
    """The defect as it was: a tcpSocket liveness probe (15 s delay, 20 s period, 3 failures), no startup
    probe."""
    old = {
        "readinessProbe": {"initialDelaySeconds": 5, "periodSeconds": 10},
        "livenessProbe": {"initialDelaySeconds": 15, "periodSeconds": 20, "failureThreshold": 3},
    }
    restarts = [simulate_probes(old, None, 600, phases=(0, 0, phase)).restarted_at for phase in (0, 10, 19.9)]
    assert all(55 <= t <= 80 for t in restarts), restarts


def every_job():
    """(where, Job) for k8s/job.yaml and every Job of every overlay."""
    jobs = [
        ("job.yaml", d)
        for d in yaml.safe_load_all((K8S / "job.yaml").read_text())
        if d and d["kind"] == "Job"
    ]
    for overlay in TRAINING_OVERLAYS:
        jobs += [(overlay, d) for d in render_overlay(overlay) if d["kind"] == "Job"]
    return jobs


JOBS = every_job()


@pytest.mark.parametrize("where, job", JOBS, ids=[w for w, _ in JOBS])
def test_permanent_codes_fail_the_job_at_the_first_attempt(where, job):
    for code in PERMANENT_EXIT_CODES:
        jc = JobController(job)
        assert jc.fail(PodFailure(code)) == "FailJob" and jc.failed and jc.reason == "PodFailurePolicy", code


@pytest.mark.parametrize("where, job", JOBS, ids=[w for w, _ in JOBS])
def test_retriable_codes_and_disruptions_never_fail_the_job(where, job):
    jc = JobController(job)
    for code in RETRIABLE_EXIT_CODES * 50:
        assert jc.fail(PodFailure(code)) == "Ignore"
    for code in (None, 137, 143):
        assert jc.fail(PodFailure(code, disruption_target=True)) == "Ignore"
    assert not jc.failed and jc.counted == 0


@pytest.mark.parametrize("where, job", JOBS, ids=[w for w, _ in JOBS])
def test_bugs_and_ooms_use_up_backoff_limit(where, job):
    jc = JobController(job)
    limit = job["spec"]["backoffLimit"]
    for attempt in range(limit):
        jc.fail(PodFailure(EXIT_UNEXPECTED if attempt % 2 else 137))
    assert not jc.failed
    assert jc.fail(PodFailure(EXIT_UNEXPECTED)) == "Count" and jc.reason == "BackoffLimitExceeded"


@pytest.mark.parametrize("where, job", JOBS, ids=[w for w, _ in JOBS])
def test_a_deadline_ends_a_job_that_keeps_being_preempted(where, job):
    jc = JobController(job)
    deadline = job["spec"]["activeDeadlineSeconds"]
    assert 3600 <= deadline <= 7 * DAY
    while not jc.failed:
        jc.fail(PodFailure(143, disruption_target=True))
        jc.advance(3600)
    assert jc.reason == "DeadlineExceeded" and jc.elapsed >= deadline


def test_twenty_preemptions_of_eight_workers_never_fail_the_indexed_job():
    """A stop vote makes all 8 workers exit 143; only the preempted one carries DisruptionTarget."""
    [job] = [d for d in render_overlay("gke-multinode") if d["kind"] == "Job"]
    job["spec"]["completions"] = job["spec"]["parallelism"] = 8
    jc = JobController(job)
    for preemption in range(20):
        preempted = preemption % 8
        for index in range(8):
            assert jc.fail(PodFailure(143, disruption_target=index == preempted, index=index)) == "Ignore"
    assert not jc.failed and jc.counted == 0
    assert jc.fail(PodFailure(EXIT_DATA, index=3)) == "FailJob"


def _chief_preempted_while_exporting(barrier: bool) -> tuple:
    """2 workers: the chief is exporting when the Spot node under it goes; worker 1 is done training.

    Our trainer's rules (trainer/train/run.py, distribute.py): a worker at the final barrier loses its
    peer and exits 144; without the barrier it has already exited 0. A (re)started worker waits up to
    --peer_timeout_seconds for every peer's DNS name, then exits 145; once all resolve, training
    resumes from the checkpoint, the chief exports and both exit 0. Returns (exported, Job outcome).
    """
    [job] = [d for d in render_overlay("gke-multinode") if d["kind"] == "Job"]
    life = IndexedJobLife(job)
    [c] = job["spec"]["template"]["spec"]["containers"]
    peer_timeout = int(next(a for a in c["args"] if a.startswith("--peer_timeout_seconds=")).split("=")[1])
    life.exit(1, EXIT_PEER_LOST if barrier else 0)  # at the barrier, the collective fails with the chief
    life.exit(0, 143, disruption_target=True)  # the preempted chief: replaced
    while not life.controller.failed:
        if all(life.in_dns(i) for i in life.state):  # the restarted workers meet, resume and export
            life.exit(0, 0)
            life.exit(1, 0)
            return True, "Complete"
        life.controller.advance(peer_timeout)
        life.exit(0, EXIT_TRANSIENT)  # a peer never resolved: retriable, replaced
    return False, life.controller.reason


def test_a_worker_waits_for_the_chiefs_export_so_a_chief_lost_while_exporting_is_not_stranded():
    """A worker that finished while the chief exported left the DNS for good, and the
    replacement chief waited for it until the Job's deadline; the barrier keeps it in the run."""
    assert _chief_preempted_while_exporting(barrier=False) == (False, "DeadlineExceeded")
    assert _chief_preempted_while_exporting(barrier=True) == (True, "Complete")


def test_tfjob_retries_exactly_the_retriable_codes():
    [tfjob] = [d for d in render_overlay("tfjob") if d["kind"] == "TFJob"]
    for code in RETRIABLE_EXIT_CODES + (137,):
        assert tfjob_restarts(tfjob, "Worker", code), code
    for code in PERMANENT_EXIT_CODES + (EXIT_UNEXPECTED,):
        assert not tfjob_restarts(tfjob, "Worker", code), code
    assert 3600 <= tfjob["spec"]["runPolicy"]["activeDeadlineSeconds"] <= 7 * DAY


def test_exit_code_contract_is_what_the_policies_assume():
    assert (EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED) == PERMANENT_EXIT_CODES and all(
        c < 128 for c in PERMANENT_EXIT_CODES
    )
    assert RETRIABLE_EXIT_CODES == (143, 144, 145)
