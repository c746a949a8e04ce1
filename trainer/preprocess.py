"""The one preprocessing path shared by training and serving, so the two can never drift.

Model input is always the gray image in [0, 1] replicated to three channels (the seed's input
shape, and what ImageNet-pretrained encoders expect). The target and the way a prediction becomes
an RGB image depend on the colour space:
  * `rgb`: the model predicts sRGB in [0, 1] directly (the seed's recipe);
  * `lab`: the model predicts CIE a*b* / 128 and the image is rebuilt with the input's own L*, so
    structure comes from the input and only chroma is learned.
"""

import tensorflow as tf

COLOR_SPACES = ("rgb", "lab")
AB_SCALE = 128.0  # a*, b* of sRGB colours lie within about [-128, 127]


def output_channels(color_space: str) -> int:
    return 3 if color_space == "rgb" else 2


_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)


def _pow(x: tf.Tensor, exponent: float) -> tf.Tensor:
    """x ** exponent for x > 0 as exp(exponent * log x): tf.math.pow is several times slower on CPU."""
    return tf.exp(exponent * tf.math.log(x))


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB in [0, 1] -> CIE L*a*b* (D65, 2 degree observer), L* in [0, 100].

    tensorflow-io's formula and constants, with its two tf.math.pow calls written as exp/log: they
    were half of the input pipeline's CPU time (docs/PERFORMANCE.md).
    """
    linear = tf.where(rgb > 0.04045, _pow((tf.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4), rgb / 12.92)
    xyz = tf.tensordot(linear, tf.constant(_XYZ_FROM_RGB, rgb.dtype), axes=((-1,), (1,)))
    xyz = xyz / tf.constant(_D65_WHITE, rgb.dtype)
    f = tf.where(xyz > 0.008856, _pow(tf.maximum(xyz, 0.008856), 1.0 / 3.0), xyz * 7.787 + 16.0 / 116.0)
    fx, fy, fz = tf.unstack(f, axis=-1)
    return tf.stack([fy * 116.0 - 16.0, (fx - fy) * 500.0, (fy - fz) * 200.0], axis=-1)


_RGB_FROM_XYZ = ((3.24048134, -1.53715152, -0.49853633), (-0.96925495, 1.87599, 0.04155593),
                 (0.05564664, -0.20404134, 1.05731107))


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """CIE L*a*b* -> sRGB clipped to [0, 1]: tensorflow-io's formula without tf.math.pow (see rgb_to_lab)."""
    l, a, b = tf.unstack(lab, axis=-1)
    fy = (l + 16.0) / 116.0
    f = tf.stack([a / 500.0 + fy, fy, tf.maximum(fy - b / 200.0, 0.0)], axis=-1)
    xyz = tf.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787) * tf.constant(_D65_WHITE, lab.dtype)
    linear = tf.tensordot(xyz, tf.constant(_RGB_FROM_XYZ, lab.dtype), axes=((-1,), (1,)))
    rgb = tf.where(linear > 0.0031308, _pow(tf.maximum(linear, 0.0031308), 1.0 / 2.4) * 1.055 - 0.055, linear * 12.92)
    return tf.clip_by_value(rgb, 0.0, 1.0)


def gray_lightness(gray: tf.Tensor) -> tf.Tensor:
    """L* of a gray image in [0, 1] (..., 1): the lightness of the neutral colour (Y, Y, Y)."""
    return rgb_to_lab(tf.concat([gray, gray, gray], axis=-1))[..., :1]


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


def predictions_to_rgb(prediction: tf.Tensor, gray: tf.Tensor, color_space: str) -> tf.Tensor:
    """Model output -> sRGB in [0, 1] at the gray image's resolution.

    `gray` may be larger than the prediction (serving a full-resolution photo): chroma is upsampled
    and joined with the full-resolution L*, so the result stays sharp. RGB predictions are resized.
    """
    prediction = tf.cast(prediction, tf.float32)
    size = tf.shape(gray)[-3:-1]
    if color_space == "rgb":
        return tf.clip_by_value(tf.image.resize(prediction, size, method="bilinear"), 0.0, 1.0)
    ab = tf.image.resize(prediction, size, method="bilinear") * AB_SCALE
    return lab_to_rgb(tf.concat([gray_lightness(gray), ab], axis=-1))


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 -> float32 in [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)
