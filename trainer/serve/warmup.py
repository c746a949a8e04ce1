"""Warmup requests for TF Serving, written into every export as `assets.extra/tf_serving_warmup_requests`.

TF Serving replays these requests against a newly loaded version before it reports the version
AVAILABLE (tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc RunSaveModelWarmup;
g3doc/saved_model_warmup.md), so the first user request after a rollout or scale-up does not pay for
kernel set-up, buffer growth and the first run of each signature. The file is a TFRecord of
serialized `tensorflow.serving.PredictionLog`, at most 1000 records (saved_model_warmup_util.h
kMaxNumRecords); a record that fails to run fails the load, which is why every request here is one
the export must answer (tests/test_warmup.py replays them in TF 2.21 and in the serving image's TF).
"""

import os

import numpy as np
import tensorflow as tf

from trainer.serve.serving_protos import PredictionLog

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SMALL_SIDE = (160, 120)  # a thumbnail
LARGE_SIDE = (1920, 1280)  # a phone photo, shrunk to fit the export's pixel limit if that is lower
TENSOR_BATCH = 4


def synthetic_photo(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic RGB image with gradients and edges (a flat image would skip decoder paths)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    waves = [np.sin(x / width * rng.uniform(2, 9) + y / height * rng.uniform(2, 9)) for _ in range(3)]
    return ((np.stack(waves, axis=-1) + 1) * 127.5).astype(np.uint8)


def fit(side: tuple, max_pixels: int) -> tuple:
    """`side` scaled down (aspect kept) until it has at most max_pixels pixels; the export refuses bigger."""
    width, height = side
    scale = min(1.0, (max_pixels / (width * height)) ** 0.5)
    return max(1, int(width * scale)), max(1, int(height * scale))


def warmup_requests(max_pixels: int) -> list:
    """[(signature, {input: numpy array})]: a small PNG and a large JPEG through serving_default, one at a
    time as the client sends them, and a batch through colorize_tensor."""
    small = tf.io.encode_png(synthetic_photo(*SMALL_SIDE, seed=1)).numpy()
    large = tf.io.encode_jpeg(synthetic_photo(*fit(LARGE_SIDE, max_pixels), seed=2), quality=90).numpy()
    gray = (
        np.stack([synthetic_photo(120, 120, seed)[..., :1] for seed in range(TENSOR_BATCH)]).astype(
            np.float32
        )
        / 255
    )
    return [
        ("serving_default", {"image_bytes": np.array([small], dtype=object)}),
        ("serving_default", {"image_bytes": np.array([large], dtype=object)}),
        ("colorize_tensor", {"gray": gray}),
    ]


def prediction_log(model_name: str, signature: str, inputs: dict):
    """One PredictionLog holding a PredictRequest, as TF Serving's warmup reader expects."""
    log = PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        # Our PredictionLog comes from a private descriptor pool: copy the TensorProto by its bytes.
        request.inputs[name].ParseFromString(tf.make_tensor_proto(value).SerializeToString())
    return log


def write_warmup(saved_model_dir: str, max_pixels: int, model_name: str = "colorizer") -> str:
    """Writes the warmup file into a SavedModel folder; returns its path."""
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in warmup_requests(max_pixels):
            writer.write(prediction_log(model_name, signature, inputs).SerializeToString())
    return path
