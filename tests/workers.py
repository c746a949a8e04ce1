"""Real `python -m trainer.task` worker processes on localhost, shared by the multi-process tests."""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import time

import tensorflow as tf

from tests import forkserver
from tests.conftest import write_photos
from tests.forkserver import ENV

GRACE_SECONDS = 30  # a Spot VM's preemption notice; the pod must have saved and exited by then


def prepare_data(root) -> str:
    """24 photos -> train (2 shards, 4 steps an epoch at a global batch of 4) and validation."""
    write_photos(root / "photos", 24)
    flags = [
        f"--input_dir={root}/photos",
        f"--output_dir={root}/data",
        "--num_shards=2",
        "--holdout_fraction=0.25",
    ]
    prepared = forkserver.run("trainer.prepare", flags, ENV)
    assert prepared.returncode == 0, prepared.stderr
    return root / "data"


def train_flags(data, run_dir, epochs, *extra) -> list:
    return [
        f"--train_data={data}/train-*",
        f"--eval_data={data}/validation-*",
        f"--model_dir={run_dir}/model",
        f"--export_dir={run_dir}/export",
        "--base_filters=4",
        "--batch_size=2",
        "--loss=mse",  # distributed mechanics; --loss=two_heads in extra where a test covers the default
        f"--epochs={epochs}",
        "--patience=0",
        "--peer_timeout_seconds=30",
        *extra,
    ]


def free_ports(n) -> list:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config_envs(ports) -> list:
    workers = [f"localhost:{p}" for p in ports]
    return [
        {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
        for i in range(len(ports))
    ]


def indexed_env(index, ports, resolvable=None) -> dict:
    """An Indexed Job pod's environment; peers not in `resolvable` (default: all) get no address."""
    names = [f"colorizer-{i}.colorizer-workers:2222" for i in range(len(ports))]
    known = range(len(ports)) if resolvable is None else resolvable
    return {
        "JOB_COMPLETION_INDEX": str(index),
        "COLORIZER_NUM_WORKERS": str(len(ports)),
        "COLORIZER_JOB_NAME": "colorizer",
        "COLORIZER_SERVICE": "colorizer-workers",
        "COLORIZER_PEER_OVERRIDES": ",".join(f"{names[i]}=127.0.0.1:{ports[i]}" for i in known),
    }


STARTED: list = []  # every worker started, so a failed test can't leave one training (conftest kills them)


def start(flags, env, log):
    # Beside the log, in the test's tmp_path: a non-chief worker's throwaway checkpoint and export
    # folders (gone with the pod on a cluster) would otherwise pile up in /tmp, run after run.
    scratch = os.path.join(os.path.dirname(log.name), "tmp")
    os.makedirs(scratch, exist_ok=True)
    proc = forkserver.start(
        "trainer.task", flags, {**ENV, "TMPDIR": scratch, **env}, stdout=log, stderr=subprocess.STDOUT
    )
    STARTED.append(proc)
    return proc


def kill_leftovers() -> None:
    """SIGKILLs workers a test left running (it failed before stopping them)."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def run_pair(flags, envs, tmp_path, tag):
    """Runs one worker per environment to the end; returns (exit codes, outputs)."""
    logs = [open(tmp_path / f"{tag}{i}.log", "w+") for i in range(len(envs))]
    procs = [start(flags, env, log) for env, log in zip(envs, logs)]
    codes = [p.wait(timeout=400) for p in procs]
    return codes, [open(tmp_path / f"{tag}{i}.log").read() for i in range(len(envs))]


def checkpoint_step(directory) -> int:
    """The newest checkpoint's step in `directory` (0: none yet). A running trainer's state file is
    renamed into place, so a poll never reads it half-written."""
    latest = tf.train.latest_checkpoint(str(directory)) if os.path.isdir(directory) else None
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def wait_for_checkpoint(directory, step, procs, logs, timeout=300) -> None:
    """Waits until `directory` holds a checkpoint at `step` or later; fails if a worker exits first."""
    deadline = time.time() + timeout
    while checkpoint_step(directory) < step:
        assert time.time() < deadline, "no checkpoint in time"
        assert all(p.poll() is None for p in procs), [open(log).read() for log in logs]
        time.sleep(0.2)


@dataclasses.dataclass
class Preemption:
    """What a preemption of one worker did to every worker of the cluster."""

    codes: list  # each worker's exit code
    seconds: list  # from the first SIGTERM to each worker's exit
    steps: list  # the step each worker says it stopped at (None if it didn't say)
    outputs: list


def preempt_one(flags, envs, tmp_path, victim, tag="p", after_step=1) -> Preemption:
    """Starts the workers, waits for a checkpoint at `after_step`, sends SIGTERM to `victim` and
    measures how each worker ends. More SIGTERMs follow (0.5 s later, and once the victim says it
    stopped): neither the save nor the exit code may suffer from them."""
    paths = [tmp_path / f"{tag}{i}.log" for i in range(len(envs))]
    procs = [start(flags, env, open(path, "w")) for env, path in zip(envs, paths)]
    wait_for_checkpoint(tmp_path / "model" / "checkpoints", after_step, procs, paths)
    signalled, repeated = time.time(), False
    procs[victim].send_signal(signal.SIGTERM)
    time.sleep(0.5)
    procs[victim].send_signal(signal.SIGTERM)
    ended = [None] * len(procs)
    while None in ended and time.time() < signalled + 120:
        if not repeated and "stopped by SIGTERM" in paths[victim].read_text():
            procs[victim].send_signal(signal.SIGTERM)  # while Python and TF shut down
            repeated = True
        ended = [e or (time.time() if p.poll() is not None else None) for e, p in zip(ended, procs)]
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
    outputs = [path.read_text() for path in paths]
    steps = [re.search(r"stopped by SIGTERM at step (\d+)", o) for o in outputs]
    return Preemption(
        [p.wait() for p in procs],
        [round(e - signalled, 1) if e else None for e in ended],
        [int(s.group(1)) if s else None for s in steps],
        outputs,
    )
