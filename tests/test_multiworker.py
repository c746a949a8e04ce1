"""Real worker processes on localhost: MultiWorkerMirroredStrategy, faults, preemption."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, write_photos

ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mw")
    write_photos(root / "photos", 24)
    subprocess.run([sys.executable, "-m", "trainer.prepare", f"--input_dir={root}/photos", f"--output_dir={root}/data",
                    "--num_shards=2", "--holdout_fraction=0.25"], env=ENV, cwd=REPO, check=True, capture_output=True)
    return root / "data"


def _flags(data, run_dir, epochs, *extra):
    return [f"--train_data={data}/train-*", f"--eval_data={data}/validation-*", f"--model_dir={run_dir}/model",
            f"--export_dir={run_dir}/export", "--base_filters=4", "--batch_size=2", f"--epochs={epochs}",
            "--patience=0", "--collective_timeout_seconds=30", "--peer_timeout_seconds=30", *extra]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(flags, env, log):
    return subprocess.Popen([sys.executable, "-m", "trainer.task", *flags], cwd=REPO, env={**ENV, **env},
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def _indexed_env(index, ports):
    names = [f"colorizer-{i}.colorizer-workers:2222" for i in range(2)]
    return {"JOB_COMPLETION_INDEX": str(index), "COLORIZER_NUM_WORKERS": "2", "COLORIZER_JOB_NAME": "colorizer",
            "COLORIZER_SERVICE": "colorizer-workers",
            "COLORIZER_PEER_OVERRIDES": ",".join(f"{n}=127.0.0.1:{p}" for n, p in zip(names, ports))}


def _run_pair(flags, envs, tmp_path, tag):
    logs = [open(tmp_path / f"{tag}{i}.log", "w+") for i in range(2)]
    procs = [_start(flags, env, log) for env, log in zip(envs, logs)]
    codes = [p.wait(timeout=400) for p in procs]
    outputs = [open(tmp_path / f"{tag}{i}.log").read() for i in range(2)]
    return codes, outputs


def _checkpoint_values(directory):
    reader = tf.train.load_checkpoint(directory)
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/"))
    return {n: reader.get_tensor(n) for n in names}


def test_two_workers_with_tf_config_agree_and_export_once(data, tmp_path):
    ports = _free_ports(2)
    workers = [f"localhost:{p}" for p in ports]
    envs = [{"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
            for i in range(2)]
    # Synchronised batch norm: otherwise each worker's moving statistics follow its own shard of data.
    codes, outputs = _run_pair(_flags(data, tmp_path, 2, "--sync_batchnorm"), envs, tmp_path, "w")
    assert codes == [0, 0], outputs
    assert "MultiWorkerMirroredStrategy: 2 replica(s)" in outputs[0]
    assert "global batch 4 (2 per replica x 2)" in outputs[0]
    checkpoints = [re.search(r"checkpoints: (\S+)", o).group(1) for o in outputs]
    assert checkpoints[0] == f"{tmp_path}/model/checkpoints" and checkpoints[1] != checkpoints[0]
    chief, other = (_checkpoint_values(c) for c in checkpoints)
    assert chief.keys() == other.keys() and len(chief) > 10
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    assert len(os.listdir(tmp_path / "export")) == 1 and "SavedModel:" not in outputs[1]


def test_indexed_job_worker_loss_fails_fast_and_restart_resumes(data, tmp_path):
    ports = _free_ports(2)
    envs = [_indexed_env(i, ports) for i in range(2)]
    flags = _flags(data, tmp_path, 1000, "--checkpoint_every_steps=2")
    logs = [open(tmp_path / f"f{i}.log", "w+") for i in range(2)]
    procs = [_start(flags, env, log) for env, log in zip(envs, logs)]
    deadline = time.time() + 300
    while _step(tmp_path / "model" / "checkpoints") < 6 and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [open(tmp_path / f"f{i}.log").read() for i in range(2)]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    code = procs[0].wait(timeout=120)
    assert code == 144 and time.time() - killed < 60
    assert "error: lost a peer worker" in open(tmp_path / "f0.log").read()
    saved = _step(tmp_path / "model" / "checkpoints")

    codes, outputs = _run_pair(_flags(data, tmp_path, 4, "--checkpoint_every_steps=2"), envs, tmp_path, "r")
    assert codes == [0, 0], outputs
    assert "indexed job cluster" in outputs[0]
    resumed = int(re.search(r"resuming from step (\d+)", outputs[0]).group(1))
    assert resumed == saved > 0
    assert _step(tmp_path / "model" / "checkpoints") == 16  # 4 epochs x 4 steps: continued, not restarted
    assert len(os.listdir(tmp_path / "export")) == 1


def test_sigterm_saves_and_exits_143_then_resumes(data, tmp_path):
    log = open(tmp_path / "t.log", "w+")
    proc = _start(_flags(data, tmp_path, 1000), {}, log)
    deadline = time.time() + 300
    while "epoch 2/" not in open(tmp_path / "t.log").read() and time.time() < deadline:
        assert proc.poll() is None, open(tmp_path / "t.log").read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    saved = _step(tmp_path / "model" / "checkpoints")
    assert saved >= 16 and "checkpoint saved" in open(tmp_path / "t.log").read()
    assert not os.path.exists(tmp_path / "export")
    resumed = subprocess.run([sys.executable, "-m", "trainer.task", *_flags(data, tmp_path, 6)], cwd=REPO, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {saved}" in resumed.stderr


def _step(directory) -> int:
    latest = tf.train.latest_checkpoint(str(directory)) if os.path.isdir(directory) else None
    return int(latest.rsplit("-", 1)[1]) if latest else 0
