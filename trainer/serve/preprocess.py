"""The one preprocessing path shared by training and serving, so the two can never drift.

Model input is always the gray image in [0, 1] replicated to three channels (the seed's input
shape, and what ImageNet-pretrained encoders expect). The target and the way a prediction becomes
an RGB image depend on the colour space:
  * `rgb`: the model predicts sRGB in [0, 1] directly (the seed's recipe);
  * `lab`: the model predicts CIE a*b* / 128 and the image is rebuilt with the input's own L*, so
    structure comes from the input and only chroma is learned.
"""

import dataclasses
import functools

import numpy as np
import tensorflow as tf

AB_SCALE = 128.0  # a*, b* of sRGB colours lie within about [-128, 127]
AB_BIN_SIZE = 10.0  # a*b* quantisation step of the classification head (Zhang et al. 2016)
ANNEAL_TEMPERATURE = 0.38  # annealed-mean decode: between the mean (1, desaturated) and the mode (0, noisy)
# Two heads (Zhang et al. 2017): the decoded a*b* is `blend` x the classification head's annealed
# mean plus the rest x the regression head's a*b*. Unfitted, the regression head alone: it scored the
# best PSNR (docs/QUALITY.md); `trainer.train.decode_fit` fits the blend and exports it with the model.
TWO_HEAD_BLEND = 0.0


def output_channels(color_space: str, loss: str = "mse") -> int:
    """3 (RGB); 2 (a*b* / 128); one logit per in-gamut a*b* bin (`classification`); or the bin
    logits followed by a*b* / 128 (`two_heads`: classification and regression heads)."""
    if color_space == "rgb":
        return 3
    return {"classification": len(ab_bins()), "two_heads": len(ab_bins()) + 2}.get(loss, 2)


def _srgb_to_ab_numpy(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] [..., 3] -> CIE a*b* (D65), in NumPy so the bin table is built without TF ops."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = (
        linear
        @ np.array(
            [[0.412453, 0.212671, 0.019334], [0.357580, 0.715160, 0.119193], [0.180423, 0.072169, 0.950227]]
        )
        / np.array([0.950456, 1.0, 1.088754])
    )
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack([500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)


@functools.lru_cache(maxsize=None)
def ab_bins() -> np.ndarray:
    """Centres [Q, 2] of the AB_BIN_SIZE grid cells that some sRGB colour falls in (Q is about 300).

    Fixed by the colour space alone, so training and every export agree on what each logit means.
    """
    axis = np.linspace(0.0, 1.0, 48)
    rgb = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    cells = np.unique(np.round(_srgb_to_ab_numpy(rgb) / AB_BIN_SIZE).astype(np.int64), axis=0)
    return (cells * AB_BIN_SIZE).astype(np.float32)


def decode_bins(logits: tf.Tensor, temperature: float = None) -> tf.Tensor:
    """Bin logits [..., Q] -> a*b* / 128 [..., 2] by the annealed mean of Zhang et al. (2016).

    softmax(logits / T) equals the re-normalised p^(1/T); its expectation over the bin centres
    keeps most of the mode's saturation without the mode's speckle.
    """
    temperature = ANNEAL_TEMPERATURE if temperature is None else temperature
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)
    return tf.tensordot(probabilities, tf.constant(ab_bins() / AB_SCALE), axes=[[-1], [0]])


def decode_heads(prediction: tf.Tensor, blend: float = TWO_HEAD_BLEND) -> tf.Tensor:
    """Bin logits [..., Q], or bin logits then regressed a*b* [..., Q + 2] -> a*b* / 128 [..., 2]."""
    bins = len(ab_bins())
    if prediction.shape[-1] == bins:
        return decode_bins(prediction)
    if blend == 0.0:  # a Python number: decided when tracing, so serving skips the softmax over bins
        return prediction[..., bins:]
    return blend * decode_bins(prediction[..., :bins]) + (1.0 - blend) * prediction[..., bins:]


_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)


def _pow(x: tf.Tensor, exponent: float) -> tf.Tensor:
    """x ** exponent for x > 0 as exp(exponent * log x): tf.math.pow is several times slower on CPU."""
    return tf.exp(exponent * tf.math.log(x))


def _srgb_to_linear(rgb: tf.Tensor) -> tf.Tensor:
    return tf.where(rgb > 0.04045, _pow((tf.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4), rgb / 12.92)


def _lab_f(t: tf.Tensor) -> tf.Tensor:
    return tf.where(t > 0.008856, _pow(tf.maximum(t, 0.008856), 1.0 / 3.0), t * 7.787 + 16.0 / 116.0)


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB in [0, 1] -> CIE L*a*b* (D65, 2 degree observer), L* in [0, 100].

    tensorflow-io's formula and constants, with its two tf.math.pow calls written as exp/log: they
    were half of the input pipeline's CPU time (docs/PERFORMANCE.md).
    """
    xyz = tf.tensordot(_srgb_to_linear(rgb), tf.constant(_XYZ_FROM_RGB, rgb.dtype), axes=((-1,), (1,)))
    f = _lab_f(xyz / tf.constant(_D65_WHITE, rgb.dtype))
    fx, fy, fz = tf.unstack(f, axis=-1)
    return tf.stack([fy * 116.0 - 16.0, (fx - fy) * 500.0, (fy - fz) * 200.0], axis=-1)


_RGB_FROM_XYZ = (
    (3.24048134, -1.53715152, -0.49853633),
    (-0.96925495, 1.87599, 0.04155593),
    (0.05564664, -0.20404134, 1.05731107),
)


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """CIE L*a*b* -> sRGB clipped to [0, 1]: tensorflow-io's formula without tf.math.pow (see rgb_to_lab)."""
    lightness, a, b = tf.unstack(lab, axis=-1)
    fy = (lightness + 16.0) / 116.0
    f = tf.stack([a / 500.0 + fy, fy, tf.maximum(fy - b / 200.0, 0.0)], axis=-1)
    xyz = tf.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787) * tf.constant(_D65_WHITE, lab.dtype)
    linear = tf.tensordot(xyz, tf.constant(_RGB_FROM_XYZ, lab.dtype), axes=((-1,), (1,)))
    rgb = tf.where(
        linear > 0.0031308, _pow(tf.maximum(linear, 0.0031308), 1.0 / 2.4) * 1.055 - 0.055, linear * 12.92
    )
    return tf.clip_by_value(rgb, 0.0, 1.0)


def gray_lightness(gray: tf.Tensor) -> tf.Tensor:
    """L* of a gray image in [0, 1] (..., 1): the lightness of the neutral colour (Y, Y, Y).

    `rgb_to_lab`'s L* for R = G = B, on one channel: its XYZ rows for Y sum to 1, so L* depends on
    the linearised gray alone. A quarter of the work at serving's full resolution.
    """
    return _lab_f(_srgb_to_linear(gray)) * 116.0 - 16.0


def resize_to_model(image: tf.Tensor, size: int) -> tf.Tensor:
    """Squashes a whole image to size x size with antialiasing, as `trainer.prepare` does with PIL."""
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True)


def model_inputs(gray: tf.Tensor) -> tf.Tensor:
    """Gray float [..., H, W, 1] in [0, 1] -> model input [..., H, W, 3]."""
    return tf.concat([gray, gray, gray], axis=-1)


def model_targets(color: tf.Tensor, color_space: str) -> tf.Tensor:
    """Colour float [..., H, W, 3] in [0, 1] -> what the model learns to predict."""
    if color_space == "rgb":
        return color
    return rgb_to_lab(color)[..., 1:] / AB_SCALE


def model_pair(gray: tf.Tensor, color: tf.Tensor, color_space: str):
    """uint8 gray [..., 1] and colour [..., 3] -> (model inputs, targets), both float32.

    What a stored example becomes on the training device; serving runs the same `to_float` and
    `model_inputs` on its decoded photos. float32 whatever the precision policy: the colour
    conversion's exp/log would lose the targets' precision in float16.
    """
    gray, color = to_float(gray), to_float(color)
    return model_inputs(gray), model_targets(color, color_space)


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How a lab prediction becomes a*b*: `blend` (two heads, see `decode_heads`), then x `chroma_scale`.

    Fitted per run by `trainer.train.decode_fit` and exported with the model.
    """

    chroma_scale: float = 1.0
    blend: float = TWO_HEAD_BLEND


def predictions_to_rgb(
    prediction: tf.Tensor, gray: tf.Tensor, color_space: str, decode: DecodeSettings = DecodeSettings()
) -> tf.Tensor:
    """Model output -> sRGB in [0, 1] at the gray image's resolution.

    `gray` may be larger than the prediction (serving a full-resolution photo): chroma is upsampled
    and joined with the full-resolution L*, so the result stays sharp. RGB predictions are resized.
    A `lab` prediction with more than two channels holds bin logits (see `output_channels`),
    decoded to a*b* first (the channel count is static, so this is decided when tracing); `decode`
    says how, and by how much the a*b* is scaled.
    """
    prediction = tf.cast(prediction, tf.float32)
    if color_space == "lab" and prediction.shape[-1] != 2:
        prediction = decode_heads(prediction, decode.blend)
    size = tf.shape(gray)[-3:-1]
    if color_space == "rgb":
        return tf.clip_by_value(tf.image.resize(prediction, size, method="bilinear"), 0.0, 1.0)
    ab = tf.image.resize(prediction, size, method="bilinear") * (AB_SCALE * decode.chroma_scale)
    return lab_to_rgb(tf.concat([gray_lightness(gray), ab], axis=-1))


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 -> float32 in [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)
