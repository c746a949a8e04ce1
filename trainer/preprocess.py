"""The one preprocessing path shared by training and serving, so the two can never drift.

Model input is always the gray image in [0, 1] replicated to three channels (the seed's input
shape, and what ImageNet-pretrained encoders expect). The target and the way a prediction becomes
an RGB image depend on the colour space:
  * `rgb`: the model predicts sRGB in [0, 1] directly (the seed's recipe);
  * `lab`: the model predicts CIE a*b* / 128 and the image is rebuilt with the input's own L*, so
    structure comes from the input and only chroma is learned.
"""

import warnings

import tensorflow as tf

with warnings.catch_warnings():
    # tensorflow-io's native libraries do not load on TF 2.21; its colour ops are pure TF and work.
    warnings.simplefilter("ignore")
    from tensorflow_io.python.experimental import color_ops

COLOR_SPACES = ("rgb", "lab")
AB_SCALE = 128.0  # a*, b* of sRGB colours lie within about [-128, 127]


def output_channels(color_space: str) -> int:
    return 3 if color_space == "rgb" else 2


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB in [0, 1] -> CIE L*a*b* (D65, 2 degree observer), L* in [0, 100]."""
    return color_ops.rgb_to_lab(rgb)


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """CIE L*a*b* -> sRGB clipped to [0, 1]."""
    return tf.clip_by_value(color_ops.lab_to_rgb(lab), 0.0, 1.0)


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
