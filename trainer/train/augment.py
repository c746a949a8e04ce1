"""Augmentation of uint8 batches on the training device, inside the replicated step.

It runs next to the convolutions rather than in the host's tf.data pipeline, which only reads and
decodes (docs/SCALING.md: the host's cores are what limits a GPU node). Randomness is stateless:
a flip depends only on (seed, step, replica), so a run with `--seed` flips the same examples the
same way, also after a restart, and no random state has to be checkpointed or synchronised.
"""

import tensorflow as tf


def step_seed(seed: int, step: tf.Tensor, replica: tf.Tensor) -> tf.Tensor:
    """The stateless seed [2] of one replica's batch at one step: a distinct stream for each pair."""
    stream = tf.cast(step, tf.int64) * 65536 + tf.cast(replica, tf.int64)
    return tf.stack([tf.constant(seed, tf.int64), stream])


def random_flip(gray: tf.Tensor, color: tf.Tensor, seed: tf.Tensor):
    """Flips each pair of a batch [N, H, W, C] left-right with probability 1/2, gray and colour together."""
    flip = tf.random.stateless_uniform(tf.shape(gray)[:1], seed) < 0.5
    mask = flip[:, tf.newaxis, tf.newaxis, tf.newaxis]
    return tf.where(mask, tf.reverse(gray, [2]), gray), tf.where(mask, tf.reverse(color, [2]), color)
