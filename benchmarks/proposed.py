"""The changes recommended for trainer/ (docs/PERFORMANCE.md), timed here against the current code.

Each pair computes the same tensor; `run` reports microseconds per image on one thread and the
largest difference between the two results, so the recommendation carries its own evidence.
"""

import tensorflow as tf

from benchmarks import common
from trainer import input_pipeline, preprocess

_XYZ_FROM_RGB = [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
_D65 = [0.95047, 1.0, 1.08883]


def _pow(x: tf.Tensor, exponent: float) -> tf.Tensor:
    """x ** exponent for x > 0 as exp(exponent * log x): about 5x faster than tf.math.pow on CPU."""
    return tf.exp(exponent * tf.math.log(x))


def fast_rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """tensorflow-io's rgb_to_lab (D65, 2 degrees) with its two tf.math.pow calls replaced by exp/log."""
    linear = tf.where(rgb > 0.04045, _pow((tf.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4), rgb / 12.92)
    xyz = tf.tensordot(linear, tf.transpose(tf.constant(_XYZ_FROM_RGB)), axes=((-1,), (0,))) / tf.constant(_D65)
    f = tf.where(xyz > 0.008856, _pow(tf.maximum(xyz, 0.008856), 1.0 / 3.0), xyz * 7.787 + 16.0 / 116.0)
    fx, fy, fz = tf.unstack(f, axis=-1)
    return tf.stack([fy * 116.0 - 16.0, (fx - fy) * 500.0, (fy - fz) * 200.0], axis=-1)


def flip_each(gray: tf.Tensor, color: tf.Tensor):
    """Per-example uint8 flip inside the parallel parse map (replaces the batched tf.where flip)."""
    flip = tf.random.uniform([]) < 0.5
    return tf.cond(flip, lambda: (tf.reverse(gray, [-2]), tf.reverse(color, [-2])), lambda: (gray, color))


def _time_per_image(fn, args, batch: int, repeats: int) -> float:
    fn = tf.function(fn, autograph=False)
    fn(*args)
    return 1e6 * min(common.timed(lambda: fn(*args)) for _ in range(repeats)) / batch


def run(batch: int, repeats: int) -> dict:
    """Current vs proposed cost (us/image, best of `repeats`) and the max |difference| of the results."""
    gray8 = tf.random.uniform([batch, 120, 120, 1], 0, 256, tf.int32)
    color8 = tf.cast(tf.random.uniform([batch, 120, 120, 3], 0, 256, tf.int32), tf.uint8)
    gray8 = tf.cast(gray8, tf.uint8)
    color = preprocess.to_float(color8)
    lab_diff = tf.reduce_max(tf.abs(preprocess.rgb_to_lab(color) - fast_rgb_to_lab(color)))
    pairs = {
        "lab_targets": (lambda c: preprocess.model_targets(c, "lab"),
                        lambda c: fast_rgb_to_lab(c)[..., 1:] / preprocess.AB_SCALE, (color,)),
        "flip": (lambda g, c: input_pipeline._random_flip(preprocess.to_float(g), preprocess.to_float(c)),
                 lambda g, c: tuple(preprocess.to_float(t) for t in tf.map_fn(
                     lambda p: flip_each(*p), (g, c), fn_output_signature=(tf.uint8, tf.uint8))), (gray8, color8)),
    }
    result = {"lab_max_abs_diff": float(lab_diff)}
    for name, (current, proposed, args) in pairs.items():
        result[f"{name}_current_us_per_image"] = _time_per_image(current, args, batch, repeats)
        result[f"{name}_proposed_us_per_image"] = _time_per_image(proposed, args, batch, repeats)
    return result
