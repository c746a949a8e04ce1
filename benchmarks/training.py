"""Training: the real `trainer.train.loop.Trainer` loop vs a bare tf.function step, FLOPs and MFU.

Five variants run interleaved on the same model, optimizer and batch size:
  * loop: `Trainer._step_functions()` pulling from `Trainer._datasets()` (what `fit` runs: uint8
    batches, flips and Lab targets inside the step);
  * loop_cached: the same loop fed one in-memory uint8 batch, isolating the loop's own overhead
    from the input pipeline competing for the same CPU cores;
  * bare: a plain tf.function train step called on one fixed float batch (inputs and targets made);
  * bare_preprocess: the same step with the device-side preprocessing in front of it, on the
    same uint8 batch, and preprocess_only: that preprocessing alone; `device_preprocess_share` is
    its share of the step's time.
"""

import tempfile

import keras
import tensorflow as tf
from tensorflow.python.profiler import model_analyzer, option_builder

from benchmarks import common
from trainer.serve import preprocess
from trainer.train import augment
from trainer.train import steps as trainer_steps
from trainer.train.config import TrainConfig
from trainer.train.loop import Trainer


def matmul_peak_flops(size: int, repeats: int) -> float:
    """This machine's float32 FLOP/s on a large square matmul (the denominator of MFU)."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()
    seconds = [common.timed(lambda: matmul(a, b).numpy()) for _ in range(repeats)]
    return common.median_rate(2.0 * size**3, seconds)


def graph_flops(fn, *specs) -> int:
    """Float ops the TF profiler counts in `fn`'s graph (Conv2D, its gradients, MatMul, elementwise)."""
    graph = tf.function(fn).get_concrete_function(*specs).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(model_analyzer.profile(graph, options=options).total_float_ops)


def _layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def analytic_conv_flops(model: keras.Model) -> int:
    """Forward multiply-adds x2 of every convolution, per image, counted from layer shapes."""
    total = 0
    for layer in _layers(model):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            continue
        kh, kw = layer.kernel_size
        cin, cout = layer.input.shape[-1], layer.filters
        transposed = isinstance(layer, keras.layers.Conv2DTranspose)
        h, w = (layer.input if transposed else layer.output).shape[1:3]
        total += 2 * h * w * kh * kw * cin * cout
    return total


def model_flops(model: keras.Model, output_channels: int) -> dict:
    """FLOPs per image: forward and train step (forward + gradients) from the graph, plus the conv check."""
    image = tf.TensorSpec([1, 120, 120, 3], tf.float32)
    target = tf.TensorSpec([1, 120, 120, output_channels], tf.float32)

    def loss_and_grads(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        return tape.gradient(loss, model.trainable_variables)

    forward = graph_flops(lambda x: model(x, training=False), image)
    return {
        "forward_flops_per_image": forward,
        "train_flops_per_image": graph_flops(loss_and_grads, image, target),
        "analytic_conv_forward_flops_per_image": analytic_conv_flops(model),
    }


def make_trainer(shards, model: str, batch: int, base_filters: int, model_dir: str) -> Trainer:
    """The real Trainer on one CPU device, reading `shards` for both splits.

    MSE, as `bare_step`, so the two steps compare like with like (and docs/SCALING.md's numbers
    stay comparable); the default two heads cost more per step for their 261 bin logits.
    """
    config = TrainConfig(
        train_data=shards.pattern,
        eval_data=shards.pattern,
        model_dir=model_dir,
        export_dir=model_dir + "/export",
        model=model,
        loss="mse",
        batch_size=batch,
        base_filters=base_filters,
    )
    return Trainer(config, tf.distribute.OneDeviceStrategy("/cpu:0"), shards, shards)


def bare_step(model, optimizer):
    """The minimal train step: forward, MSE, gradients, Adam update; no strategy, no dataset."""

    @tf.function
    def step(inputs, targets):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(model(inputs, training=True), tf.float32) - targets))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        )
        return loss

    return step


def device_preprocess(optimizer, color_space: str):
    """The trainer's own device-side preprocessing (`steps.device_preprocess`), seeded as replica 0."""
    return lambda gray, color: trainer_steps.device_preprocess(
        gray, color, color_space, augment.step_seed(0, optimizer.iterations, 0)
    )


def preprocessing_step(step, optimizer, color_space: str):
    """`step` behind the device-side preprocessing, in one graph."""
    prepare = device_preprocess(optimizer, color_space)
    return tf.function(lambda gray, color: step(*prepare(gray, color)))


def _variants(trainer, steps: int) -> dict:
    """name -> a function running `steps` train steps, all on the same model and optimizer."""
    train_ds, _ = trainer._datasets()
    run_train, _ = trainer._step_functions()
    strategy = trainer.strategy
    real = iter(strategy.experimental_distribute_dataset(train_ds))
    gray, color = next(iter(train_ds))
    cached = iter(
        strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((gray, color)).repeat())
    )
    step = bare_step(trainer.model, trainer.optimizer)
    with_preprocess = preprocessing_step(step, trainer.optimizer, trainer.config.color_space)
    inputs, targets = preprocess.model_pair(gray, color, trainer.config.color_space)
    preprocess_only = tf.function(device_preprocess(trainer.optimizer, trainer.config.color_space))

    def repeat(fn, *args):
        def run():
            for _ in range(steps):
                loss = fn(*args)
            loss.numpy()

        return run

    return {
        "loop": lambda: float(run_train(real, steps)),
        "loop_cached": lambda: float(run_train(cached, steps)),
        "bare": repeat(step, inputs, targets),
        "bare_preprocess": repeat(with_preprocess, gray, color),
        "preprocess_only": repeat(lambda g, c: preprocess_only(g, c)[1], gray, color),
    }


def measure_model(shards, model: str, batch: int, base_filters: int, steps: int, repeats: int) -> dict:
    """Loop / cached loop / bare step images per second (interleaved), the preprocessing share, FLOPs."""
    with tempfile.TemporaryDirectory(prefix="colorizer-bench-train-") as model_dir:
        trainer = make_trainer(shards, model, batch, base_filters, model_dir)
        variants = _variants(trainer, steps)
        for fn in variants.values():
            fn()
        seconds = common.interleave(variants, repeats)
        flops = model_flops(
            trainer.model,
            preprocess.output_channels(trainer.config.color_space, trainer.config.loss),
        )
    images = steps * batch
    result = {f"{name}_images_per_s": common.median_rate(images, s) for name, s in seconds.items()}
    result.update(flops)
    result["loop_over_bare"] = common.median_ratio(seconds["loop"], seconds["bare"])
    result["loop_cached_over_bare"] = common.median_ratio(seconds["loop_cached"], seconds["bare"])
    # The preprocessing timed alone over the step that includes it: a 1-2% difference between two
    # one-second step timings drowns in a shared machine's noise (kept as `..._by_difference`).
    result["device_preprocess_share"] = common.median_ratio(
        seconds["bare_preprocess"], seconds["preprocess_only"]
    )
    result["device_preprocess_share_by_difference"] = 1.0 - common.median_ratio(
        seconds["bare_preprocess"], seconds["bare"]
    )
    result["parameters"] = int(trainer.model.count_params())
    return result


def run(shards, models, batch: int, base_filters: int, steps: int, repeats: int, peak_size: int) -> dict:
    """Per-model figures; the top-level keys describe the recommended model (the first in `models`)."""
    result = {
        "batch": batch,
        "base_filters": base_filters,
        "load_average": common.load_average(),
        "matmul_peak_flop_s": matmul_peak_flops(peak_size, max(3, repeats)),
    }
    for model in models:
        entry = measure_model(shards, model, batch, base_filters, steps, repeats)
        for kind in ("loop", "bare"):
            entry[f"{kind}_mfu"] = (
                entry[f"{kind}_images_per_s"] * entry["train_flops_per_image"] / result["matmul_peak_flop_s"]
            )
        result[model] = entry
    main = result[models[0]]
    result.update(
        model=models[0],
        loop_images_per_s=main["loop_images_per_s"],
        bare_step_images_per_s=main["bare_images_per_s"],
        loop_over_bare=main["loop_over_bare"],
        mfu=main["loop_mfu"],
        flops_per_image=main["train_flops_per_image"],
        device_preprocess_share=main["device_preprocess_share"],
    )
    return result
