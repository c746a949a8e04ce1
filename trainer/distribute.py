"""Chooses the `tf.distribute` strategy; the training loop is the same under every choice."""

import tensorflow as tf
from absl import logging

from trainer.errors import ConfigError

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


def build_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """`auto`/`mirrored`: MirroredStrategy over all local GPUs (one CPU replica when there are none)."""
    if name in ("auto", "mirrored"):
        strategy = tf.distribute.MirroredStrategy()
    elif name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    else:
        raise ConfigError(f"--strategy={name!r}: choose one of {', '.join(STRATEGIES)}")
    logging.info("strategy %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy
