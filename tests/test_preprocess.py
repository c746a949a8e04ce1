import numpy as np
import tensorflow as tf
from skimage.color import rgb2lab

from trainer.serve import preprocess

# Same D65 / 2 degree constants as scikit-image; differences are float32 rounding.
LAB_TOLERANCE = 0.05


def _colours():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.uniform(0, 1, (500, 3)), np.eye(3), [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]]])


def test_rgb_to_lab_matches_scikit_image():
    rgb = _colours()
    ours = preprocess.rgb_to_lab(tf.constant(rgb, tf.float32)).numpy()
    np.testing.assert_allclose(ours, rgb2lab(rgb[None])[0], atol=LAB_TOLERANCE)


def test_lab_matches_tensorflow_io_both_ways():
    """Our conversion is tensorflow-io's formula without tf.math.pow (2x faster on CPU): same numbers."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its native libraries don't load on TF 2.21; these ops are pure TF
        from tensorflow_io.python.experimental import color_ops

    rgb = tf.constant(_colours(), tf.float32)
    lab = color_ops.rgb_to_lab(rgb)
    np.testing.assert_allclose(preprocess.rgb_to_lab(rgb).numpy(), lab.numpy(), atol=2e-3)
    np.testing.assert_allclose(
        preprocess.lab_to_rgb(lab).numpy(), np.clip(color_ops.lab_to_rgb(lab).numpy(), 0, 1), atol=1e-4
    )


def test_lab_round_trip():
    rgb = tf.constant(_colours(), tf.float32)
    np.testing.assert_allclose(
        preprocess.lab_to_rgb(preprocess.rgb_to_lab(rgb)).numpy(), rgb.numpy(), atol=1e-3
    )


def test_targets_and_reconstruction_invert_each_other_for_gray_consistent_colours():
    rng = np.random.default_rng(1)
    color = tf.constant(rng.uniform(0.2, 0.8, (2, 8, 8, 3)), tf.float32)
    lab = preprocess.rgb_to_lab(color)
    gray_l = lab[..., :1]
    # A gray image whose L* equals the colour's L*: reconstruction must return the colour exactly.
    gray = tf.constant(
        np.interp(
            gray_l.numpy(),
            preprocess.gray_lightness(tf.linspace(0.0, 1.0, 2001)[:, None]).numpy()[:, 0],
            np.linspace(0, 1, 2001),
        ),
        tf.float32,
    )
    rgb = preprocess.predictions_to_rgb(preprocess.model_targets(color, "lab"), gray, "lab")
    np.testing.assert_allclose(rgb.numpy(), color.numpy(), atol=2e-3)
    np.testing.assert_allclose(preprocess.model_targets(color, "rgb").numpy(), color.numpy())


def test_lab_prediction_upsampled_to_gray_resolution():
    gray = tf.random.uniform([1, 40, 60, 1])
    ab = tf.zeros([1, 12, 12, 2])
    rgb = preprocess.predictions_to_rgb(ab, gray, "lab")
    assert rgb.shape == (1, 40, 60, 3)
    # Zero chroma on a gray image is that gray image: channels equal, structure kept at full size.
    np.testing.assert_allclose(rgb[..., 0].numpy(), rgb[..., 2].numpy(), atol=2e-3)


def test_model_inputs_replicate_gray():
    gray = tf.random.uniform([2, 5, 5, 1])
    assert preprocess.model_inputs(gray).shape == (2, 5, 5, 3)


def test_ab_bins_cover_the_srgb_gamut():
    bins = preprocess.ab_bins()
    assert 200 < len(bins) < 400 and preprocess.output_channels("lab", "classification") == len(bins)
    ab = preprocess.rgb_to_lab(tf.constant(_colours(), tf.float32)).numpy()[:, 1:]
    nearest = np.min(np.linalg.norm(ab[:, None] - bins[None], axis=-1), axis=1)
    assert nearest.max() <= preprocess.AB_BIN_SIZE / np.sqrt(2) + 0.5


def test_annealed_mean_decode_lies_between_mean_and_mode():
    bins = preprocess.ab_bins() / preprocess.AB_SCALE
    logits = np.zeros(len(bins), np.float32)
    peak, other = int(np.argmax(bins[:, 0])), int(np.argmin(np.abs(bins).sum(-1)))
    logits[[peak, other]] = [3.0, 2.5]
    annealed = preprocess.decode_bins(tf.constant(logits)).numpy()
    mean = preprocess.decode_bins(tf.constant(logits), temperature=1.0).numpy()
    mode = bins[peak]
    assert mean[0] < annealed[0] < mode[0]
    np.testing.assert_allclose(
        preprocess.decode_bins(tf.constant(logits), temperature=1e-3).numpy(), mode, atol=1e-4
    )


def test_bin_logits_become_rgb_at_the_gray_resolution():
    logits = tf.zeros([1, 12, 12, len(preprocess.ab_bins())])
    rgb = preprocess.predictions_to_rgb(logits, tf.random.uniform([1, 40, 60, 1]), "lab")
    assert rgb.shape == (1, 40, 60, 3) and np.all(np.isfinite(rgb.numpy()))


def test_two_heads_decode_to_the_blend_of_annealed_mean_and_regression():
    logits = tf.random.normal([1, 4, 4, len(preprocess.ab_bins())])
    regressed = tf.random.uniform([1, 4, 4, 2], -0.5, 0.5)
    blend = preprocess.decode_heads(tf.concat([logits, regressed], -1), blend=0.25)
    expected = 0.25 * preprocess.decode_bins(logits) + 0.75 * regressed
    np.testing.assert_allclose(blend.numpy(), expected.numpy(), atol=1e-6)
    assert preprocess.output_channels("lab", "two_heads") == len(preprocess.ab_bins()) + 2
    rgb = preprocess.predictions_to_rgb(
        tf.concat([logits, regressed], -1), tf.random.uniform([1, 8, 8, 1]), "lab"
    )
    assert rgb.shape == (1, 8, 8, 3)


def test_gray_lightness_is_rgb_to_lab_of_the_neutral_colour():
    gray = tf.linspace(0.0, 1.0, 4097)[:, None]
    expected = preprocess.rgb_to_lab(tf.concat([gray] * 3, axis=-1))[:, :1]
    np.testing.assert_allclose(preprocess.gray_lightness(gray).numpy(), expected.numpy(), atol=2e-4)


def test_model_pair_converts_uint8_to_float32_inputs_and_targets():
    color = tf.constant([[[[255, 0, 0], [0, 0, 0]]]], tf.uint8)
    gray = tf.constant([[[[76], [0]]]], tf.uint8)
    inputs, targets = preprocess.model_pair(gray, color, "lab")
    assert inputs.dtype == tf.float32 and targets.dtype == tf.float32
    np.testing.assert_allclose(inputs.numpy()[0, 0, 0], [76 / 255] * 3, rtol=1e-6)
    np.testing.assert_allclose(
        targets.numpy(), preprocess.model_targets(preprocess.to_float(color), "lab").numpy()
    )
