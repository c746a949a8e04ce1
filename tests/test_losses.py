import numpy as np
import pytest
import tensorflow as tf

from trainer.serve import preprocess
from trainer.train import losses


def _targets(seed=0, shape=(2, 6, 6)):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(-60, 60, shape + (2,)) / preprocess.AB_SCALE, tf.float32)


@pytest.mark.parametrize("name", ["mse", "l1", "huber"])
def test_regression_losses_are_per_example_and_zero_at_the_target(name):
    targets = _targets()
    assert losses.per_example_loss(name, targets, targets).numpy() == pytest.approx([0, 0])
    worse = losses.per_example_loss(name, targets + tf.constant([[[[0.0]]], [[[0.3]]]]), targets).numpy()
    assert worse.shape == (2,) and worse[0] == pytest.approx(0) and worse[1] > 0


def test_huber_is_quadratic_then_linear():
    zero = tf.zeros([1, 1, 1, 1])
    small = losses.per_example_loss("huber", zero + 0.05, zero).numpy()[0]
    large = losses.per_example_loss("huber", zero + 0.5, zero).numpy()[0]
    assert small == pytest.approx(0.5 * 0.05**2)
    assert large == pytest.approx(losses.HUBER_DELTA * (0.5 - 0.5 * losses.HUBER_DELTA))


def test_soft_encoding_is_a_distribution_peaked_at_the_nearest_bin():
    ab = _targets() * preprocess.AB_SCALE
    soft = losses.soft_encode(ab).numpy()
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(soft.argmax(-1), losses.nearest_bin(ab).numpy())


def test_classification_loss_prefers_logits_at_the_true_colour():
    targets = _targets()
    soft = losses.soft_encode(targets * preprocess.AB_SCALE)
    good = losses.per_example_loss("classification", 10.0 * soft, targets).numpy()
    uniform = losses.per_example_loss("classification", tf.zeros_like(soft), targets).numpy()
    assert good.shape == (2,) and np.all(good < uniform)


def test_two_heads_loss_scores_the_bins_and_the_regressed_colour():
    targets = _targets()
    logits = 10.0 * losses.soft_encode(targets * preprocess.AB_SCALE)
    right = losses.per_example_loss("two_heads", tf.concat([logits, targets], -1), targets).numpy()
    wrong_colour = losses.per_example_loss("two_heads", tf.concat([logits, -targets], -1), targets).numpy()
    wrong_bins = losses.per_example_loss(
        "two_heads", tf.concat([tf.zeros_like(logits), targets], -1), targets
    ).numpy()
    bins_only = losses.per_example_loss("classification", logits, targets).numpy()
    np.testing.assert_allclose(right, bins_only, rtol=1e-6)  # a perfect regression adds nothing
    assert np.all(right < wrong_colour) and np.all(right < wrong_bins)


def test_rebalancing_weights_favour_rare_bins_with_mean_one_under_the_prior():
    counts = np.zeros(len(preprocess.ab_bins()), np.int64)
    counts[:3] = [1000, 10, 0]
    weights = losses.rebalancing_weights(counts)
    assert weights[0] < weights[1] < weights[2]
    assert np.sum(counts / counts.sum() * weights) == pytest.approx(1.0, rel=1e-5)


def test_count_bins_histograms_target_pixels():
    targets = tf.zeros([2, 4, 4, 2])
    dataset = tf.data.Dataset.from_tensors((tf.zeros([2, 4, 4, 3]), targets)).repeat()
    counts = losses.count_bins(dataset, 3)
    assert (
        counts.sum() == 3 * 2 * 2 * 2 and counts[losses.nearest_bin(targets).numpy()[0, 0, 0]] == counts.sum()
    )


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown loss"):
        losses.per_example_loss("hinge", tf.zeros([1, 1, 1, 2]), tf.zeros([1, 1, 1, 2]))


def test_rgb_regression_space_scores_the_pictures_both_make_with_the_input_lightness():
    targets = _targets()
    lightness = tf.fill(targets.shape[:-1] + (1,), 60.0)
    off = targets + 0.2
    assert losses.per_example_loss("mse", targets, targets, lightness=lightness).numpy() == pytest.approx(
        [0, 0]
    )
    in_rgb = losses.per_example_loss("mse", off, targets, lightness=lightness).numpy()
    picture = lambda ab: preprocess.lab_to_rgb(tf.concat([lightness, ab * preprocess.AB_SCALE], -1))  # noqa: E731
    expected = losses.RGB_ERROR_WEIGHT * tf.reduce_mean(tf.square(picture(off) - picture(targets)), [1, 2, 3])
    np.testing.assert_allclose(in_rgb, expected.numpy(), rtol=1e-5)
    # In sRGB, the same a*b* error weighs less where it is less visible: near black.
    dark = losses.per_example_loss("mse", off, targets, lightness=lightness * 0.0 + 5.0).numpy()
    assert np.all(dark < in_rgb)
    # two_heads' regression head moves to sRGB, and its gradient reaches the regressed a*b*.
    logits = tf.zeros(targets.shape[:-1] + (len(preprocess.ab_bins()),))
    regressed = tf.Variable(off)
    with tf.GradientTape() as tape:
        loss = losses.per_example_loss(
            "two_heads", tf.concat([logits, regressed], -1), targets, None, lightness
        )
    gradient = tape.gradient(loss, regressed).numpy()
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).sum() > 0
