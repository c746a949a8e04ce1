import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.data import input_pipeline
from trainer.data.input_pipeline import find_shards
from trainer.errors import ConfigError, StoppedError, TransientError
from trainer.train import distribute
from trainer.train.config import TrainConfig
from trainer.train.loop import Trainer


def test_tf_config_with_several_tasks_is_a_cluster():
    tf_config = {
        "cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]},
        "task": {"type": "worker", "index": 1},
    }
    cluster = distribute.resolve_cluster({"TF_CONFIG": json.dumps(tf_config)})
    assert cluster.workers == ("c:1", "w0:1", "w1:1") and (cluster.task_type, cluster.task_index) == (
        "worker",
        1,
    )
    assert cluster.spec.as_dict() == {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}
    alone = {"cluster": {"worker": ["w0:1"]}, "task": {"type": "worker", "index": 0}}
    assert distribute.resolve_cluster({"TF_CONFIG": json.dumps(alone)}) is None
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribute.resolve_cluster({"TF_CONFIG": "{bad"})


def test_indexed_job_environment_builds_pod_addresses():
    env = {
        "JOB_COMPLETION_INDEX": "2",
        "COLORIZER_NUM_WORKERS": "3",
        "COLORIZER_JOB_NAME": "train",
        "COLORIZER_SERVICE": "train-workers",
    }
    cluster = distribute.resolve_cluster(env)
    assert cluster.workers == tuple(f"train-{i}.train-workers:2222" for i in range(3))
    assert (cluster.task_type, cluster.task_index, cluster.source) == ("worker", 2, "indexed job")
    overridden = dict(
        env, COLORIZER_PORT="3000", COLORIZER_PEER_OVERRIDES="train-1.train-workers:3000=127.0.0.1:9"
    )
    assert distribute.resolve_cluster(overridden).workers[1] == "127.0.0.1:9"
    assert distribute.resolve_cluster(dict(env, COLORIZER_NUM_WORKERS="1")) is None
    with pytest.raises(ConfigError, match="COLORIZER_SERVICE"):
        distribute.resolve_cluster({k: v for k, v in env.items() if k != "COLORIZER_SERVICE"})
    with pytest.raises(ConfigError, match="outside 0..2"):
        distribute.resolve_cluster(dict(env, JOB_COMPLETION_INDEX="3"))
    with pytest.raises(ConfigError, match="COLORIZER_PEER_OVERRIDES"):
        distribute.resolve_cluster(dict(env, COLORIZER_PEER_OVERRIDES="nonsense"))


def test_no_cluster_means_mirrored_and_multi_worker_without_cluster_is_an_error():
    assert distribute.resolve_cluster({}) is None
    assert isinstance(distribute.build_strategy("auto", {}), tf.distribute.MirroredStrategy)
    with pytest.raises(ConfigError, match="multi_worker needs"):
        distribute.build_strategy("multi_worker", {})


def test_wait_for_peers_names_the_missing_peer_and_is_transient():
    def resolve(host, port):
        if host == "job-1.svc":
            raise OSError("no such host")

    distribute.wait_for_peers(["job-0.svc:2222"], 0.1, resolve)
    # A peer's pod may simply not be scheduled yet: a retriable exit (145), never a failed Job.
    with pytest.raises(TransientError, match="peer job-1.svc did not resolve within 0s") as raised:
        distribute.wait_for_peers(["job-0.svc:2222", "job-1.svc:2222"], 0.0, resolve)
    assert raised.value.exit_code == 145


def test_all_reduce_is_nccl_with_gpus_and_the_ring_on_cpus():
    implementations = tf.distribute.experimental.CommunicationImplementation
    on_gpus = distribute.communication_options(
        [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")], 30
    )
    assert on_gpus.implementation == implementations.NCCL and on_gpus.timeout_seconds == 30
    on_cpus = distribute.communication_options([], 45)
    assert on_cpus.implementation == implementations.RING and on_cpus.timeout_seconds == 45


def test_shard_policy():
    policy = tf.data.experimental.AutoShardPolicy
    assert input_pipeline.shard_policy(8, 4) == policy.FILE
    assert input_pipeline.shard_policy(2, 4) == policy.DATA
    assert input_pipeline.shard_policy(1, 1) == policy.FILE


def _trainer(shards_dir, tmp_path, strategy, batch_size):
    config = TrainConfig(
        train_data=os.path.join(shards_dir, "train-*"),
        eval_data=os.path.join(shards_dir, "validation-*"),
        model_dir=str(tmp_path),
        export_dir=str(tmp_path / "export"),
        base_filters=4,
        batch_size=batch_size,
        sync_batchnorm=True,
        augment=False,
    )
    return Trainer(config, strategy, find_shards(config.train_data), find_shards(config.eval_data))


@pytest.mark.system
def test_two_replicas_step_equals_one_device_with_same_global_batch(shards_dir, tmp_path, mirrored):
    """Gradient aggregation is right: 2 replicas x 2 examples == 1 device x 4 examples.

    Plain SGD, because Adam is invariant to the gradient's scale and would hide a loss scaled by
    the wrong batch size.
    """
    mirrored = _trainer(shards_dir, tmp_path / "a", mirrored, 2)
    single = _trainer(shards_dir, tmp_path / "b", tf.distribute.OneDeviceStrategy("/cpu:0"), 4)
    assert (
        mirrored.global_batch == single.global_batch == 4 and distribute.count_workers(mirrored.strategy) == 1
    )
    single.model.set_weights(mirrored.model.get_weights())
    start = [w.numpy().copy() for w in single.model.trainable_weights]
    for trainer in (mirrored, single):
        with trainer.strategy.scope():
            trainer.optimizer = keras.optimizers.SGD(0.5)
        _, eval_ds = trainer._datasets()  # ordered batches: both see the same examples
        run_train, _ = trainer._step_functions()
        run_train(iter(trainer.strategy.experimental_distribute_dataset(eval_ds)), 1)
    update_m = np.concatenate(
        [(w.numpy() - w0).ravel() for w0, w in zip(start, mirrored.model.trainable_weights)]
    )
    update_s = np.concatenate(
        [(w.numpy() - w0).ravel() for w0, w in zip(start, single.model.trainable_weights)]
    )
    # Float reduction order differs between one and two devices; a wrong batch scaling would be 50% off.
    assert np.linalg.norm(update_m - update_s) <= 0.02 * np.linalg.norm(update_s)


def test_sigterm_while_waiting_for_peers_stops_at_once():
    with pytest.raises(StoppedError, match="stopped by SIGTERM while waiting for peers"):
        distribute.wait_for_peers(["job-1.svc:2222"], 600, lambda host, port: _unresolvable(), lambda: True)


def _unresolvable():
    raise OSError("no such host")


def test_worker_count_that_is_not_a_number_is_one_line():
    with pytest.raises(ConfigError, match="COLORIZER_NUM_WORKERS='two': not a number"):
        distribute.resolve_cluster({"JOB_COMPLETION_INDEX": "0", "COLORIZER_NUM_WORKERS": "two"})


def test_a_peer_lost_while_the_cluster_forms_is_transient(monkeypatch):
    """A peer preempted mid-formation: retriable (145), not exit 1, which fails a TFJob for good."""

    def formation_fails(*args, **kwargs):
        raise tf.errors.UnavailableError(None, None, "failed to connect to all addresses\nmore")

    monkeypatch.setattr(distribute, "wait_for_peers", lambda *args, **kwargs: None)
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", formation_fails)
    cluster = distribute._from_tf_config(
        json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}})
    )
    with pytest.raises(TransientError, match=r"^the workers could not form their cluster \(Unavailable"):
        distribute._multi_worker(cluster, 1, 0, lambda: False)

    def port_in_use(*args, **kwargs):  # would fail the same way after a restart: not transient
        raise tf.errors.InvalidArgumentError(None, None, "Address already in use")

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", port_in_use)
    with pytest.raises(tf.errors.InvalidArgumentError):
        distribute._multi_worker(cluster, 1, 0, lambda: False)
