"""The optimizer, the replicated train and eval steps, and the loop that runs many of them per call.

Each replica receives its share of a uint8 batch and does everything after decoding on its own
device: float conversion, the random flip and the colour-space targets (`preprocess.model_pair`,
the conversion serving also runs), then the model, loss and update.
"""

import keras
import tensorflow as tf

from trainer.serve import preprocess
from trainer.train import augment, losses
from trainer.train.config import TrainConfig


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """The Adam learning rate: constant (the seed's), or one warmup epoch then cosine decay to 0.

    A schedule is a function of the optimizer's step counter, so a resumed run continues on it.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    total = config.epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(1, total - warmup), warmup_target=config.learning_rate, warmup_steps=warmup
    )


def build_optimizer(config: TrainConfig, steps_per_epoch: int = 1) -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.Adam(learning_rate(config, steps_per_epoch))
    if config.precision == "mixed_float16":  # float16 gradients underflow without it; bfloat16's don't
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def replica_seed(seed: int, optimizer) -> tf.Tensor:
    """This replica's flip seed at the optimizer's current step (different on every replica and step)."""
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return augment.step_seed(seed, optimizer.iterations, replica)


def device_preprocess(gray: tf.Tensor, color: tf.Tensor, color_space: str, flip_seed=None):
    """A uint8 batch -> (model inputs, targets) on the device: the flip (when seeded), then `model_pair`."""
    if flip_seed is not None:
        gray, color = augment.random_flip(gray, color, flip_seed)
    return preprocess.model_pair(gray, color, color_space)


def build_step_functions(
    config: TrainConfig, model, optimizer, strategy, global_batch: int, seed: int, bin_weights=None
):
    """(run_train, run_eval): `run(iterator, steps)` runs `steps` steps in one call, returns the mean loss.

    The loss is summed over replicas and divided by the GLOBAL batch (`compute_average_loss`), so an
    update is the same whatever the number of replicas.
    """

    def loss_of(gray, color, flip_seed, training):
        inputs, targets = device_preprocess(gray, color, config.color_space, flip_seed)
        lightness = preprocess.gray_lightness(inputs[..., :1]) if config.regression_space == "rgb" else None
        per_example = losses.per_example_loss(
            config.loss, model(inputs, training=training), targets, bin_weights, lightness
        )
        return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)

    def train_step(gray, color):
        flip_seed = replica_seed(seed, optimizer) if config.augment else None
        with tf.GradientTape() as tape:
            loss = loss_of(gray, color, flip_seed, training=True)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    # Handed to strategy.run as a tf.function: MirroredStrategy then runs it in a replica context
    # where the optimizer's gradient all-reduce may happen (a Python wrapper around it may not).
    # No Python control flow depends on a tensor in the step: autograph's rewrite would only cost
    # start-up (about a second a run).
    train_step = tf.function(train_step, jit_compile=config.jit_compile or None, autograph=False)

    def eval_replica(gray, color):
        return loss_of(gray, color, None, training=False)

    @tf.function(autograph=False)
    def run_steps(iterator, steps, step_fn):
        def step(done, total):
            per_replica = strategy.run(step_fn, args=next(iterator))
            return done + 1, total + strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        _, total = tf.while_loop(lambda done, _: done < steps, step, (tf.constant(0), tf.constant(0.0)))
        return total / tf.cast(steps, tf.float32)

    return (
        lambda it, n: run_steps(it, tf.constant(n), train_step),
        lambda it, n: run_steps(it, tf.constant(n), eval_replica),
    )
