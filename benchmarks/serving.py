"""Serving: the exported `serving_default` (decode, preprocess, model, compose, PNG encode) vs the
bare Keras model on the same images, at several batch sizes, plus batch-1 latency percentiles.

`colorize_tensor` (model + L*a*b* -> RGB, no image codecs) is timed too, so the signature's
overhead splits into codec work and colour conversion.
"""

import io
import os
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image

from benchmarks import common
from trainer.serve import preprocess
from trainer.serve.export import export_saved_model


def encoded_photos(photos, size: int = 120):
    """PNG files of the photos squashed to the model's size (so the model's share is the same)."""
    files = []
    for photo in photos:
        buffer = io.BytesIO()
        Image.fromarray(photo).convert("RGB").resize((size, size), Image.BILINEAR).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def load_photos(photo_dir: str, count: int):
    """Up to `count` photos of `photo_dir` as uint8 arrays."""
    names = sorted(os.listdir(photo_dir))[:count]
    return [np.asarray(Image.open(os.path.join(photo_dir, n)).convert("RGB")) for n in names]


def _batch(files, batch: int):
    """`batch` image files (cycling through `files`) and the same images as gray float [B,120,120,1]."""
    chosen = [files[i % len(files)] for i in range(batch)]
    gray = tf.stack(
        [
            tf.image.rgb_to_grayscale(
                tf.image.convert_image_dtype(tf.io.decode_png(f, channels=3), tf.float32)
            )
            for f in chosen
        ]
    )
    return tf.constant(chosen), gray


def measure_batch(signatures, model_fn, files, batch: int, calls: int, repeats: int) -> dict:
    """images/s of serving_default, colorize_tensor and the bare model at one batch size (interleaved)."""
    image_bytes, gray = _batch(files, batch)
    inputs = preprocess.model_inputs(gray)
    variants = {
        "signature": lambda: [signatures["serving_default"](image_bytes=image_bytes) for _ in range(calls)],
        "tensor_signature": lambda: [signatures["colorize_tensor"](gray=gray) for _ in range(calls)],
        "model": lambda: [model_fn(inputs).numpy() for _ in range(calls)],
    }
    for fn in variants.values():
        fn()
    seconds = common.interleave(variants, repeats)
    result = {f"{name}_images_per_s": common.median_rate(calls * batch, s) for name, s in seconds.items()}
    result["signature_over_model"] = common.median_ratio(seconds["signature"], seconds["model"])
    return result


def latency(signature, files, calls: int) -> dict:
    """Per-request latency of serving_default at batch 1 over `calls` requests, in ms."""
    seconds = []
    for i in range(calls):
        request = tf.constant([files[i % len(files)]])
        seconds.append(common.timed(lambda r=request: signature(image_bytes=r)["colorized_bytes"].numpy()))
    return {
        "p50_ms_b1": common.percentile_ms(seconds, 50),
        "p99_ms_b1": common.percentile_ms(seconds, 99),
        "latency_calls_b1": calls,
    }


def run(model, color_space: str, photos, batches, calls: int, repeats: int, latency_calls: int) -> dict:
    """Exports `model` with `trainer.serve.export`, loads it back and measures it against the bare model."""
    files = encoded_photos(photos)
    model_fn = tf.function(lambda x: model(x, training=False))
    result = {"load_average": common.load_average(), "image_size": 120}
    with tempfile.TemporaryDirectory(prefix="colorizer-bench-export-") as export_dir:
        loaded = tf.saved_model.load(export_saved_model(model, color_space, export_dir))
        signatures = loaded.signatures
        for batch in batches:
            for key, value in measure_batch(
                signatures, model_fn, files, batch, max(1, calls // batch), repeats
            ).items():
                result[f"{key}_b{batch}"] = value
        result.update(latency(signatures["serving_default"], files, latency_calls))
    return result
