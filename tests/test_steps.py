"""The replicated step does on the device what the host pipeline used to: same targets, same loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.serve import preprocess
from trainer.train import augment, losses, steps
from trainer.train.config import PRECISIONS, TrainConfig
from trainer.train.models import build_model
from trainer.train.steps import build_optimizer


def _config(**overrides):
    values = dict(
        train_data="t",
        eval_data="e",
        model_dir="m",
        export_dir="x",
        base_filters=4,
        batch_size=4,
        seed=3,
        loss="mse",
    )  # the step mechanics, compared with a host-side MSE
    return TrainConfig(**{**values, **overrides})


def _batch():
    rng = np.random.default_rng(0)
    color = rng.integers(0, 256, [4, 120, 120, 3], dtype=np.uint8)
    gray = np.round(color @ [0.299, 0.587, 0.114])[..., None].astype(np.uint8)
    return tf.constant(gray), tf.constant(color)


def _setup(config):
    keras.mixed_precision.set_global_policy(config.precision)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = build_model(
            "unet", preprocess.output_channels(config.color_space, config.loss), config.base_filters
        )
        optimizer = build_optimizer(config)
        optimizer.build(model.trainable_variables)
    batches = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(_batch()).repeat()))
    run_train, run_eval = steps.build_step_functions(config, model, optimizer, strategy, 4, config.seed)
    return model, optimizer, batches, run_train, run_eval


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _host_loss(model, gray, color, color_space, training):
    """The old host-side path: float conversion and targets in the input pipeline, then the model."""
    inputs = preprocess.model_inputs(preprocess.to_float(gray))
    targets = preprocess.model_targets(preprocess.to_float(color), color_space)
    return float(tf.reduce_mean(losses.per_example_loss("mse", model(inputs, training=training), targets)))


@pytest.mark.parametrize("color_space", ["lab", "rgb"])
def test_eval_step_equals_the_host_side_targets(color_space):
    model, _, batches, _, run_eval = _setup(_config(color_space=color_space))
    gray, color = _batch()
    assert float(run_eval(batches, 1)) == pytest.approx(
        _host_loss(model, gray, color, color_space, False), rel=1e-5
    )


def test_train_step_flips_on_the_device_as_the_seed_says():
    model, optimizer, batches, run_train, _ = _setup(_config())
    gray, color = augment.random_flip(*_batch(), augment.step_seed(3, 0, 0))  # step 0, replica 0
    expected = _host_loss(model, gray, color, "lab", True)
    assert float(run_train(batches, 1)) == pytest.approx(expected, rel=1e-4)
    unflipped = _host_loss(model, *_batch(), "lab", True)
    assert abs(unflipped - expected) > 1e-6  # the seed flips at least one of the four examples


@pytest.mark.system
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_trains_with_xla(precision):
    config = _config(precision=precision, jit_compile=True)
    model, optimizer, batches, run_train, run_eval = _setup(config)
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = run_train(batches, 2)
    assert loss.dtype == tf.float32 and np.isfinite(float(loss)) and int(optimizer.iterations.numpy()) == 2
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, model.trainable_weights))
    assert np.isfinite(float(run_eval(batches, 1)))
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    compute = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}[precision]
    assert [layer.compute_dtype for layer in model.layers if "conv" in layer.name][0] == compute
