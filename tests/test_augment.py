import numpy as np
import tensorflow as tf

from trainer.train import augment


def _batch(n=64):
    gray = tf.cast(tf.reshape(tf.range(n * 4 * 5) % 251, [n, 4, 5, 1]), tf.uint8)
    return gray, tf.concat([gray, gray + 1, gray + 2], axis=-1)


def _flipped(gray, out):
    """Which examples of `out` are the mirror image of `gray`'s."""
    return [
        not np.array_equal(g, o) and np.array_equal(g[:, ::-1], o) for g, o in zip(gray.numpy(), out.numpy())
    ]


def test_flip_keeps_gray_and_colour_aligned_and_flips_about_half():
    gray, color = _batch()
    g, c = augment.random_flip(gray, color, augment.step_seed(7, 0, 0))
    assert g.dtype == tf.uint8 and c.dtype == tf.uint8
    np.testing.assert_array_equal(g.numpy()[..., 0], c.numpy()[..., 0])
    np.testing.assert_array_equal(g.numpy()[..., 0] + 2, c.numpy()[..., 2])
    assert 16 <= sum(_flipped(gray, g)) <= 48


def test_flips_depend_only_on_seed_step_and_replica():
    gray, color = _batch()
    flips = {
        key: _flipped(gray, augment.random_flip(gray, color, augment.step_seed(*key))[0])
        for key in [(7, 3, 0), (7, 3, 1), (7, 4, 0), (8, 3, 0)]
    }
    again = _flipped(gray, augment.random_flip(gray, color, augment.step_seed(7, 3, 0))[0])
    assert again == flips[(7, 3, 0)]
    assert len({tuple(f) for f in flips.values()}) == 4  # every other seed, step or replica flips others
