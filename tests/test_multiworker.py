"""Real worker processes on localhost: MultiWorkerMirroredStrategy, faults, preemption."""

import os
import re
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.workers import (
    GRACE_SECONDS,
    checkpoint_step,
    free_ports,
    indexed_env,
    preempt_one,
    run_pair,
    start,
    tf_config_envs,
    train_flags,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.system  # real processes, servers or a second TensorFlow (README: test tiers)


@pytest.fixture(scope="module")
def data(prepared_photos):
    return prepared_photos


def _logged_at(log: str, message: str) -> str:
    """The absl timestamp (MMDD HH:MM:SS.micros, comparable as text) of the line with `message`."""
    [line] = [line for line in log.splitlines() if message in line]
    return re.match(r"^[IWE](\d{4} [\d:.]+)", line).group(1)


def _checkpoint_values(directory):
    reader = tf.train.load_checkpoint(directory)
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/"))
    return {n: reader.get_tensor(n) for n in names}


def test_sigterm_to_the_chief_stops_both_workers_then_both_resume_agree_and_export_once(data, tmp_path):
    """TF_CONFIG cluster: SIGTERM to worker 0 (chief, coordination service leader) after its first
    checkpoint -> both save at the same step and exit 143 within the grace period; a restart of both
    resumes there, finishes with identical weights and exports once."""
    envs = tf_config_envs(free_ports(2))
    # Synchronised batch norm: otherwise each worker's moving statistics follow its own shard of data.
    # The default loss (two heads: bin prior, per-epoch scores, decode fit) under MultiWorkerMirrored.
    flags = train_flags(data, tmp_path, 1000, "--sync_batchnorm", "--loss=two_heads")
    stopped = preempt_one(flags, envs, tmp_path, victim=0, after_step=4)
    print("SIGTERM to the chief: exit codes", stopped.codes, "seconds to exit", stopped.seconds)
    assert stopped.codes == [143, 143], stopped.outputs
    assert max(stopped.seconds) < GRACE_SECONDS
    step = stopped.steps[0]
    assert stopped.steps == [step, step] and step >= 4
    assert checkpoint_step(tmp_path / "model" / "checkpoints") == step and not os.listdir(tmp_path / "export")

    epochs = step // 4 + 1  # 4 steps an epoch: at least one more step, and an epoch end
    flags = train_flags(data, tmp_path, epochs, "--sync_batchnorm", "--loss=two_heads")
    codes, outputs = run_pair(flags, envs, tmp_path, "w")
    assert codes == [0, 0], outputs
    assert "MultiWorkerMirroredStrategy: 2 replica(s)" in outputs[0]
    assert "all-reduce between workers: RING (0 GPU(s) on this worker)" in outputs[0]
    assert "global batch 4 (2 per replica x 2)" in outputs[0]
    assert f"resuming from step {step}" in outputs[0] and f"resuming from step {step}" in outputs[1]
    checkpoints = [re.search(r"checkpoints: (\S+)", o).group(1) for o in outputs]
    assert checkpoints[0] == f"{tmp_path}/model/checkpoints" and checkpoints[1] != checkpoints[0]
    assert checkpoint_step(checkpoints[0]) == epochs * 4
    chief, other = (_checkpoint_values(c) for c in checkpoints)
    assert chief.keys() == other.keys() and len(chief) > 10
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    assert len(os.listdir(tmp_path / "export")) == 1 and "SavedModel:" not in outputs[1]
    # Worker 1 finished only after the chief's export landed: a finished index is complete for good.
    exported = _logged_at(outputs[0], "exported SavedModel to")
    assert exported <= _logged_at(outputs[1], "every worker reached the end: the chief's export has landed")


def test_sigterm_while_the_cluster_forms_is_not_lost(data, tmp_path):
    """SIGTERM to worker 0 after TF installed its own handler but before ours is back (worker 0
    waits for worker 1 to connect): TF's notice in the coordination service stops both at step 0."""
    ports = free_ports(2)
    envs = [indexed_env(i, ports) for i in range(2)]
    logs = [tmp_path / f"c{i}.log" for i in range(2)]
    first = start(
        train_flags(data, tmp_path, 1000), {**envs[0], "TF_CPP_MIN_LOG_LEVEL": "0"}, open(logs[0], "w")
    )
    deadline = time.time() + 120
    while (
        "Started server with target" not in logs[0].read_text()
    ):  # after TF's SIGTERM handler, in the same call
        assert time.time() < deadline and first.poll() is None, logs[0].read_text()
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    second = start(train_flags(data, tmp_path, 1000), envs[1], open(logs[1], "w"))
    try:
        codes = [p.wait(timeout=120) for p in (first, second)]
    finally:
        for p in (first, second):
            p.kill()
    assert codes == [143, 143], [log.read_text() for log in logs]
    # TF logs "Started server" just before installing its handler: the signal may land on ours
    # (stop vote) or on TF's (its notice, read back once our handler is reinstalled). Both must stop.
    text = logs[0].read_text()
    assert "a worker got SIGTERM while the cluster was forming" in text or "stop agreed" in text, text
    assert all("stopped by SIGTERM at step 0" in log.read_text() for log in logs)


def test_a_lost_worker_then_a_frozen_chief_each_end_the_attempt_fast_and_a_restart_resumes(data, tmp_path):
    """Two failures of an Indexed Job, in turn. Worker 1 is killed: the chief's collective fails and it
    exits 144 (lost peer) within a minute. The restarted pair resumes from the last checkpoint; then the
    chief freezes (SIGSTOP stands in for a node that vanishes and sends no TCP reset) and worker 1 finds
    it by the coordination service's heartbeats, without a collective timeout (off by default: it costs
    a thread per collective): exit 144 within a minute. Finishing after a restart: the chief test."""
    ports = free_ports(2)
    envs = [indexed_env(i, ports) for i in range(2)]
    flags = train_flags(data, tmp_path, 1000, "--checkpoint_every_steps=2")
    checkpoints = tmp_path / "model" / "checkpoints"
    logs = [tmp_path / f"f{i}.log" for i in range(2)]
    procs = [start(flags, env, open(log, "w")) for env, log in zip(envs, logs)]
    wait_for_checkpoint(checkpoints, 6, procs, logs)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    assert procs[0].wait(timeout=120) == 144 and time.time() - killed < 60
    assert "error: lost a peer worker" in logs[0].read_text()
    saved = checkpoint_step(checkpoints)

    logs = [tmp_path / f"r{i}.log" for i in range(2)]
    procs = [start(flags, env, open(log, "w")) for env, log in zip(envs, logs)]
    try:
        wait_for_checkpoint(checkpoints, saved + 2, procs, logs)
        assert "indexed job cluster" in logs[0].read_text()
        resumed = int(re.search(r"resuming from step (\d+)", logs[0].read_text()).group(1))
        assert resumed == saved > 0  # continued, not restarted
        procs[0].send_signal(signal.SIGSTOP)
        frozen = time.time()
        assert procs[1].wait(timeout=90) == 144 and time.time() - frozen < 60
        assert "error: lost a peer worker" in logs[1].read_text()
    finally:
        for proc in procs:
            proc.kill()
