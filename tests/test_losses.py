import numpy as np
import pytest
import tensorflow as tf

from trainer import losses, preprocess


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
    assert counts.sum() == 3 * 2 * 16 and counts[losses.nearest_bin(targets).numpy()[0, 0, 0]] == counts.sum()


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown loss"):
        losses.per_example_loss("hinge", tf.zeros([1, 1, 1, 2]), tf.zeros([1, 1, 1, 2]))
