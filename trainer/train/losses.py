"""Per-example training losses, each reduced by the caller with `tf.nn.compute_average_loss`.

Why several: MSE on a*b* predicts the conditional MEAN colour, which for an ambiguous object (a
car may be red or blue) is near gray, so MSE models look desaturated. L1 and Huber are less pulled
towards the mean; `classification` (Zhang, Isola & Efros 2016) predicts a distribution over
quantised a*b* bins, weights rare (saturated) bins up so the common near-gray bins don't dominate,
and `preprocess.decode_bins` turns the distribution into a colour with the annealed mean.

Every loss maps (predictions, targets) of one replica's batch to one value per example, so the
distributed loop's contract (sum over the global batch / global batch size) holds for all of them.
"""

import numpy as np
import tensorflow as tf

from trainer.serve import preprocess
from trainer.train.config import LOSSES

SOFT_ENCODING_SIGMA = 5.0  # a*b* units: targets spread over the nearest bins, as in Zhang et al.
REBALANCE_LAMBDA = 0.5  # mix of the empirical bin prior and the uniform one (Zhang et al.'s lambda)
HUBER_DELTA = 0.1  # in a*b* / 128 units: about 13 a*b* units, quadratic below, linear above
# two_heads: weight of the regression head's MSE (a*b* / 128 units, ~0.01) next to the bins' cross
# entropy (~2-5), so both shape the shared layers.
REGRESSION_WEIGHT = 100.0
# --regression_space=rgb: sRGB squared errors are 1.5-1.75 times smaller than a*b* / 128 ones for the
# same predictions (zero, half and noisy chroma on cbsd432), so both spaces weigh alike next to the bins.
RGB_ERROR_WEIGHT = 1.6
# The classification loss scores every 3rd pixel in each direction: its tensors hold one value per
# bin (~260) per pixel, which at full 120x120 made a CPU step several times slower than the model's.
# Neighbouring pixels carry nearly the same colour, and an odd stride visits every phase of the
# U-Net's stride-2 upsamplings, so all weights are still trained.
CLASSIFICATION_PIXEL_STRIDE = 3


def _ab(targets: tf.Tensor) -> tf.Tensor:
    return tf.cast(targets, tf.float32) * preprocess.AB_SCALE


def soft_encode(ab: tf.Tensor) -> tf.Tensor:
    """a*b* [..., 2] -> a distribution over the bins [..., Q]: a Gaussian kernel around the colour."""
    bins = tf.constant(preprocess.ab_bins())
    distance2 = tf.reduce_sum(tf.square(ab[..., tf.newaxis, :] - bins), axis=-1)
    return tf.nn.softmax(-distance2 / (2.0 * SOFT_ENCODING_SIGMA**2), axis=-1)


def nearest_bin(ab: tf.Tensor) -> tf.Tensor:
    """Index of the bin closest to each a*b* colour [...]."""
    bins = tf.constant(preprocess.ab_bins())
    return tf.argmin(tf.reduce_sum(tf.square(ab[..., tf.newaxis, :] - bins), axis=-1), axis=-1)


def rebalancing_weights(bin_counts: np.ndarray) -> np.ndarray:
    """Per-bin weights proportional to 1 / ((1 - lambda) p + lambda / Q), with mean 1 under p.

    `p` is the bin histogram of the training colours; rare bins get large weights, so predicting
    near-gray everywhere no longer minimises the loss.
    """
    prior = bin_counts.astype(np.float64) / max(1.0, float(bin_counts.sum()))
    weights = 1.0 / ((1.0 - REBALANCE_LAMBDA) * prior + REBALANCE_LAMBDA / len(prior))
    return (weights / np.sum(prior * weights) if prior.sum() else weights / weights.mean()).astype(np.float32)


def count_bins(dataset: tf.data.Dataset, batches: int) -> np.ndarray:
    """Histogram over the bins of the nearest-bin index of the target pixels the classification loss
    scores (every CLASSIFICATION_PIXEL_STRIDE-th) in `batches` batches."""
    counts = np.zeros(len(preprocess.ab_bins()), np.int64)
    stride = CLASSIFICATION_PIXEL_STRIDE
    for _, targets in dataset.take(batches):
        scored = _ab(targets[:, ::stride, ::stride])
        counts += np.bincount(nearest_bin(scored).numpy().ravel(), minlength=len(counts))
    return counts


def _bin_cross_entropy(logits: tf.Tensor, targets: tf.Tensor, bin_weights=None) -> tf.Tensor:
    """Rebalanced cross entropy of bin logits against the soft-encoded targets, per example."""
    stride = CLASSIFICATION_PIXEL_STRIDE
    logits, targets = logits[:, ::stride, ::stride], targets[:, ::stride, ::stride]
    soft = soft_encode(_ab(targets))
    cross_entropy = tf.nn.softmax_cross_entropy_with_logits(soft, logits, axis=-1)
    if bin_weights is not None:  # the soft encoding peaks at the nearest bin
        cross_entropy *= tf.gather(tf.constant(bin_weights, tf.float32), tf.argmax(soft, axis=-1))
    return tf.reduce_mean(cross_entropy, axis=[1, 2])


def _squared_error(predictions: tf.Tensor, targets: tf.Tensor, lightness=None) -> tf.Tensor:
    """Per-pixel squared error of a*b* / 128, or (`lightness` [N, H, W, 1] given) of the sRGB pictures
    both make with that L*: `--regression_space=rgb`, the loss in the space PSNR is measured in."""
    if lightness is None:
        return tf.square(predictions - targets)

    def picture(ab):
        return preprocess.lab_to_rgb(tf.concat([lightness, ab * preprocess.AB_SCALE], axis=-1))

    return RGB_ERROR_WEIGHT * tf.square(picture(predictions) - picture(targets))


def per_example_loss(
    name: str, predictions: tf.Tensor, targets: tf.Tensor, bin_weights=None, lightness=None
) -> tf.Tensor:
    """One loss value per example [N]: the pixel mean of the chosen per-pixel loss.

    `targets` are what `preprocess.model_targets` makes; for `classification`, `predictions` are
    bin logits and `bin_weights` [Q] the rebalancing weights (None: unweighted); for `two_heads`,
    bin logits followed by the regressed a*b*, scored by both losses. `lightness` (the input's L*)
    moves mse and the regression head's error to sRGB (`_squared_error`).
    """
    predictions, targets = tf.cast(predictions, tf.float32), tf.cast(targets, tf.float32)
    if name == "mse":
        return tf.reduce_mean(_squared_error(predictions, targets, lightness), axis=[1, 2, 3])
    if name == "l1":
        return tf.reduce_mean(tf.abs(predictions - targets), axis=[1, 2, 3])
    if name == "huber":
        error = tf.abs(predictions - targets)
        quadratic = tf.minimum(error, HUBER_DELTA)
        return tf.reduce_mean(0.5 * tf.square(quadratic) + HUBER_DELTA * (error - quadratic), axis=[1, 2, 3])
    if name == "classification":
        return _bin_cross_entropy(predictions, targets, bin_weights)
    if name == "two_heads":
        bins = len(preprocess.ab_bins())
        regression = tf.reduce_mean(
            _squared_error(predictions[..., bins:], targets, lightness), axis=[1, 2, 3]
        )
        return (
            _bin_cross_entropy(predictions[..., :bins], targets, bin_weights) + REGRESSION_WEIGHT * regression
        )
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
