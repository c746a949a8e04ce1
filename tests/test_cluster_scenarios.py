"""Real exit codes from real trainer processes, fed into the model of the cluster's controllers.

Each scenario runs `python -m trainer.task` as a pod would (the Indexed Job's environment, peers on
local ports) and hands the exit codes it really produced to tests/controllers.py, with the rendered
manifests: the Job controller's podFailurePolicy (overlay gke-multinode) and the training-operator's
ExitCode restart policy (overlay tfjob). One preemption run serves all preemption scenarios.
"""

import copy
import shutil

import pytest

from tests import forkserver
from tests.controllers import JobController, PodFailure, render_overlay, tfjob_restarts
from tests.workers import (
    ENV,
    GRACE_SECONDS,
    checkpoint_step,
    free_ports,
    indexed_env,
    preempt_one,
    train_flags,
)

pytestmark = pytest.mark.system  # real processes, servers or a second TensorFlow (README: test tiers)

PREEMPTIONS = 20  # in a row, as a bad day on Spot VMs can bring


@pytest.fixture(scope="module")
def data(prepared_photos):
    return prepared_photos


@pytest.fixture(scope="module")
def job():
    return next(d for d in render_overlay("gke-multinode") if d["kind"] == "Job")


@pytest.fixture(scope="module")
def tfjob():
    return next(d for d in render_overlay("tfjob") if d["kind"] == "TFJob")


@pytest.fixture(scope="module")
def preempted(data, tmp_path_factory):
    """Two workers of an Indexed Job; worker 1 (not the chief) gets SIGTERM after the first checkpoint."""
    run_dir = tmp_path_factory.mktemp("preempted")
    ports = free_ports(2)
    result = preempt_one(
        train_flags(data, run_dir, 1000),
        [indexed_env(i, ports) for i in range(2)],
        run_dir,
        victim=1,
        after_step=4,
    )
    print(
        f"\nSIGTERM to worker 1 of 2: exit codes {result.codes}, seconds to exit {result.seconds}, "
        f"stopped at steps {result.steps}"
    )
    return result, run_dir


def _task(*flags, env=None, wrap=None, timeout=300):
    """One `python -m trainer.task` run to its end, as a pod's container runs it."""
    return forkserver.run("trainer.task", flags, {**ENV, **(env or {})}, timeout=timeout, wrap=wrap)


def _one_line_error(run, expected: str):
    assert expected in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in run.stderr and len(errors) == 1, run.stderr


def _scaled(job: dict, workers: int) -> dict:
    """The rendered Job for `workers` workers (completions, parallelism and the env must agree)."""
    scaled = copy.deepcopy(job)
    scaled["spec"]["completions"] = scaled["spec"]["parallelism"] = workers
    for container in scaled["spec"]["template"]["spec"]["containers"]:
        for variable in container.get("env", []):
            if variable["name"] == "COLORIZER_NUM_WORKERS":
                variable["value"] = str(workers)
    return scaled


def test_preempted_worker_and_its_peer_save_at_the_same_step_and_exit_143_in_time(preempted):
    result, run_dir = preempted
    assert result.codes == [143, 143], result.outputs
    assert all(s is not None and s < GRACE_SECONDS for s in result.seconds), result.seconds
    assert result.steps[0] == result.steps[1] and result.steps[0] >= 4
    assert checkpoint_step(run_dir / "model" / "checkpoints") == result.steps[0]
    assert "stop agreed: 1 of 2 worker(s) asked to stop after a SIGTERM (this one too)" in result.outputs[1]
    assert all("Traceback" not in o for o in result.outputs)


@pytest.mark.parametrize("workers", [2, 8])
def test_job_survives_preemptions_in_a_row(preempted, job, workers):
    """Each preemption: the preempted pod (DisruptionTarget) and every stop-voted peer fail with
    the codes the real workers exited with; none may count against backoffLimit."""
    (peer_code, victim_code), controller = preempted[0].codes, JobController(_scaled(job, workers))
    for round_ in range(PREEMPTIONS):
        victim = round_ % workers
        for index in range(workers):
            pod = (
                PodFailure(victim_code, disruption_target=True, index=index)
                if index == victim
                else PodFailure(peer_code, index=index)
            )
            assert controller.fail(pod) == "Ignore", (round_, pod)
    assert not controller.failed and controller.counted == 0


def test_tfjob_restarts_preempted_workers(preempted, tfjob):
    assert all(tfjob_restarts(tfjob, "Worker", code) for code in preempted[0].codes)


@pytest.fixture(scope="module")
def permanent_failures(data, tmp_path_factory):
    """A corrupt shard (bad data: the trainer's one-line error names the shard and the record) and a
    bad flag, each run to its real exit code."""
    root = tmp_path_factory.mktemp("permanent")
    shutil.copytree(data, root / "data")
    victim = root / "data" / "train-00001-of-00002.tfrecord"
    corrupted = bytearray(victim.read_bytes())
    corrupted[100] ^= 0xFF
    victim.write_bytes(bytes(corrupted))
    bad_data = _task(*train_flags(root / "data", root, 2))
    _one_line_error(bad_data, f"error: unreadable record in {victim} (record ")
    bad_flag = _task(*train_flags(data, root, 2), "--strategy=everywhere")
    _one_line_error(bad_flag, "error: flag --strategy=everywhere")
    return {"bad data": bad_data.returncode, "bad flag": bad_flag.returncode}


def test_bad_data_and_bad_flags_fail_the_job_at_the_first_attempt(permanent_failures, job, tfjob):
    assert permanent_failures == {"bad data": 3, "bad flag": 2}
    for code in permanent_failures.values():
        controller = JobController(job)
        assert controller.fail(PodFailure(code)) == "FailJob"
        assert controller.failed and controller.reason == "PodFailurePolicy"
        assert not tfjob_restarts(tfjob, "Worker", code)


def _retried_forever(code, job, tfjob):
    controller = JobController(job)
    assert all(controller.fail(PodFailure(code, index=i % 2)) == "Ignore" for i in range(PREEMPTIONS))
    assert not controller.failed and tfjob_restarts(tfjob, "Worker", code)


def test_peer_that_does_not_resolve_is_retried_and_never_fails_the_job(data, tmp_path, job, tfjob):
    ports = free_ports(2)
    run = _task(
        *train_flags(data, tmp_path, 1), "--peer_timeout_seconds=2", env=indexed_env(0, ports, resolvable=[0])
    )
    assert run.returncode == 145, run.stderr
    _one_line_error(run, "error: peer colorizer-1.colorizer-workers did not resolve within 2s")
    _retried_forever(run.returncode, job, tfjob)


@pytest.fixture(scope="module")
def failing_storage(tmp_path_factory):
    """The GCS emulator answering every request 503, as storage does during an incident."""
    from tests.gcs_emulator import start_or_skip

    emulator = start_or_skip(str(tmp_path_factory.mktemp("gcs")))
    with emulator.faults(1.0):
        yield emulator
    emulator.close()


def test_storage_unavailable_after_retries_is_retried_and_never_fails_the_job(
    failing_storage, tmp_path, job, tfjob
):
    # TF's GCS filesystem retries 10 times over minutes by default; the same path, sooner.
    retries = {
        "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
        "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "10000",
    }
    run = _task(
        "--train_data=gs://colorizer-test/data/train-*",
        f"--model_dir={tmp_path}/model",
        env={**failing_storage.env, **retries},
        wrap=failing_storage.wrap,
    )
    assert run.returncode == 145, run.stderr
    _one_line_error(run, "error: gs://colorizer-test/data/train-*: storage unavailable after retries")
    _retried_forever(run.returncode, job, tfjob)
