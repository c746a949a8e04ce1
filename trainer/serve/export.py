"""Export a trained model as a SavedModel that stock TF Serving loads: `{export_dir}/{version}/`.

Signatures (both run `trainer.serve.preprocess`, the same code training used):
  * `serving_default`: `image_bytes` (JPEG/PNG/BMP up to `max_pixels`, 1, 3 or 4 channels) ->
    `colorized_bytes` (PNG at the input's own resolution). The `_bytes` suffix makes TF Serving's
    REST API exchange these as `{"b64": ...}`.
  * `colorize_tensor`: `gray` float32 [N, 120, 120, 1] in [0, 1] -> `rgb` float32 [N, 120, 120, 3].
Both check their input first (N from 1 to MAX_BATCH, shape, image headers): TF Serving feeds a
request's tensor to the graph without checking it against the signature, and a wrong shape reaching
a oneDNN kernel aborts the whole server process instead of failing the request.
"""

import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf
from absl import logging

from trainer.data.schema import IMAGE_SIZE
from trainer.errors import DataError, TransientError
from trainer.serve import preprocess
from trainer.serve.image_limits import check_batch_size, check_image_size
from trainer.serve.limits import DEFAULT_MAX_PIXELS, MAX_BATCH, STARTER, STARTER_DIR
from trainer.serve.warmup import write_warmup

METADATA_FILE = "colorizer.json"


def decode_gray(image_bytes: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """A JPEG, PNG or BMP file -> gray uint8 [H, W, 1] (BT.601 luma, alpha dropped).

    uint8, as `trainer.prepare` stores gray images. Not an image, an empty string, a truncated file
    or one with more than `max_pixels` pixels (checked in its header, before anything is decoded)
    raise InvalidArgumentError for the request.
    """
    with tf.control_dependencies([check_image_size(image_bytes, max_pixels)]):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.image.rgb_to_grayscale(image)


def checked_batch(batch: tf.Tensor, shape: list) -> tf.Tensor:
    """`batch` once its shape matches `shape` and it holds 1 to MAX_BATCH items (else InvalidArgument)."""
    batch = tf.ensure_shape(batch, shape)
    with tf.control_dependencies([check_batch_size(batch, MAX_BATCH)]):
        return tf.identity(batch)


class ColorizerModule(tf.Module):
    """The exported object: the model's variables plus the serving functions around its call."""

    def __init__(
        self,
        model: keras.Model,
        color_space: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode: preprocess.DecodeSettings = preprocess.DecodeSettings(),
    ):
        super().__init__()
        # The backend tf.Variables are the only state the SavedModel tracks, as `tf_variables/N`: with
        # Keras 3's wrapper objects in its checkpoint, TF Serving's session loader looks for other
        # names than the functions read ("Could not find variable ...", tensorflow/tensorflow#72963,
        # keras-team/keras#20095; tests/test_serving_runtime.py).
        self.tf_variables = [variable.value for variable in model.variables]
        # The model's call, not the Keras object (a partial is not tracked): the export holds the
        # signatures and those variables, what TF Serving loads, and saves in half the time.
        self._predict = functools.partial(model, training=False)
        self.color_space = color_space
        self.max_pixels = max_pixels
        self.decode = decode  # constants of the traced graph: the serving decode the run fitted

    def _colorize_small(self, gray: tf.Tensor) -> tf.Tensor:
        """gray [N, 120, 120, 1] -> model prediction (RGB, or a*b* / 128)."""
        return tf.cast(self._predict(preprocess.model_inputs(gray)), tf.float32)

    # No Python control flow in the signatures depends on a tensor: autograph's rewrite would only
    # add about half a second to every export.
    @tf.function(
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32, name="gray")],
        autograph=False,
    )
    def colorize_tensor(self, gray):
        gray = checked_batch(gray, [None, IMAGE_SIZE, IMAGE_SIZE, 1])
        rgb = preprocess.predictions_to_rgb(self._colorize_small(gray), gray, self.color_space, self.decode)
        return {"rgb": rgb}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")], autograph=False)
    def colorize_bytes(self, image_bytes):
        image_bytes = checked_batch(image_bytes, [None])

        def decode(data):
            # Each photo is decoded once; its full-size gray waits as a uint8 string (1 byte a pixel)
            # while the batch runs through the model: photos differ in size, so they can't be stacked.
            gray = decode_gray(data, self.max_pixels)
            return preprocess.resize_to_model(preprocess.to_float(gray), IMAGE_SIZE), tf.io.serialize_tensor(
                gray
            )

        small, grays = tf.map_fn(
            decode,
            image_bytes,
            parallel_iterations=1,
            fn_output_signature=(
                tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32),
                tf.TensorSpec([], tf.string),
            ),
        )
        predictions = self._colorize_small(small)

        def compose(args):
            serialized, prediction = args
            gray = tf.ensure_shape(
                preprocess.to_float(tf.io.parse_tensor(serialized, tf.uint8)), [None, None, 1]
            )
            rgb = preprocess.predictions_to_rgb(
                prediction[tf.newaxis], gray[tf.newaxis], self.color_space, self.decode
            )[0]
            # zlib level 1: on cbsd68 photos 4x faster than the default level 6 and 0.05% larger.
            return tf.io.encode_png(tf.image.convert_image_dtype(rgb, tf.uint8, saturate=True), compression=1)

        # One image at a time (map_fn runs 10 in parallel in a graph): see trainer/serve/limits.py.
        encoded = tf.map_fn(
            compose, (grays, predictions), fn_output_signature=tf.string, parallel_iterations=1
        )
        return {"colorized_bytes": encoded}


def version_folders(export_dir: str) -> list:
    """[(version, path)] of `export_dir`'s all-digit folders, the ones TF Serving considers, highest first."""
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(export_dir)] if tf.io.gfile.isdir(export_dir) else []
    return sorted(((int(n), os.path.join(export_dir, n)) for n in names if n.isdigit()), reverse=True)


def complete_versions(export_dir: str) -> list:
    """Paths of the versions whose saved_model.pb (written last) exists, highest first."""
    return [
        path
        for _, path in version_folders(export_dir)
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))
    ]


def resolve_saved_model(path: str) -> str:
    """The SavedModel folder `path` names: itself, an export folder's highest complete version (as TF
    Serving picks), or for `starter` the packaged model (an existing path of that name wins)."""
    if path == STARTER and not tf.io.gfile.exists(path):
        if not tf.io.gfile.exists(os.path.join(STARTER_DIR, "saved_model.pb")):
            raise DataError(f"the starter model is not in this installation ({STARTER_DIR} is missing)")
        path = STARTER_DIR
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    for version in complete_versions(path):
        return version
    raise DataError(f"no SavedModel at {path} (expected saved_model.pb or numbered version folders)")


def next_version(export_dir: str) -> int:
    """A Unix-time version, strictly above any existing one so TF Serving switches to it."""
    return max([int(time.time())] + [version + 1 for version, _ in version_folders(export_dir)])


def export_saved_model(
    model: keras.Model,
    color_space: str,
    export_dir: str,
    metadata: dict = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: preprocess.DecodeSettings = preprocess.DecodeSettings(),
) -> str:
    """Writes `{export_dir}/{version}/` via a temporary folder that TF Serving ignores; returns its path.

    `decode` (fitted by `trainer.train.decode_fit`) is part of both signatures and of `colorizer.json`.
    The export carries TF Serving's warmup requests (`trainer.serve.warmup`), so each version is warm
    before it is marked AVAILABLE. For an object store the export is written to local disk first
    and each file uploaded and read back (see `_publish`).
    """
    module = ColorizerModule(model, color_space, max_pixels, decode)
    version = next_version(export_dir)
    final = os.path.join(export_dir, str(version))
    if "://" in export_dir:
        tmp = tempfile.mkdtemp(prefix=f"colorizer-export-{version}-")
    else:  # TF Serving only considers all-digit names, so it never sees this folder
        tmp = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
        tf.io.gfile.makedirs(export_dir)
    signatures = {"serving_default": module.colorize_bytes, "colorize_tensor": module.colorize_tensor}
    tf.saved_model.save(module, tmp, signatures=signatures)
    with open(os.path.join(tmp, METADATA_FILE), "w") as handle:
        json.dump(
            {
                "color_space": color_space,
                "image_size": IMAGE_SIZE,
                "max_pixels": max_pixels,
                "decode": dataclasses.asdict(decode),
                **(metadata or {}),
            },
            handle,
            indent=2,
        )
    write_warmup(tmp, max_pixels)
    _publish(tmp, final)
    logging.info("exported SavedModel to %s", final)
    return final


def _publish(tmp: str, final: str) -> None:
    """Moves a finished local export into its version folder.

    A local rename is atomic. Object stores have no directory rename, so there every file is
    uploaded, read back and compared (TF's GCS writer has finished uploads as empty objects without
    raising under 503s: tests/test_gcs.py), and `saved_model.pb` goes last. TF Serving lists a
    version as soon as any of its objects exists, so a poll during the upload may try to load it:
    that load fails without saved_model.pb (never on a partial model) and is retried a minute later
    (docs/SERVING.md, "A version being uploaded").
    """
    if "://" not in final:
        tf.io.gfile.rename(tmp, final)
        return
    files = [os.path.join(root, name) for root, _, names in os.walk(tmp) for name in names]
    files.sort(key=lambda path: os.path.basename(path) == "saved_model.pb")
    for path in files:
        _upload_verified(path, os.path.join(final, os.path.relpath(path, tmp)))
    shutil.rmtree(tmp, ignore_errors=True)


def _upload_verified(path: str, target: str, attempts: int = 3) -> None:
    with open(path, "rb") as handle:
        data = handle.read()
    for attempt in range(1, attempts + 1):
        tf.io.gfile.copy(path, target, overwrite=True)
        with tf.io.gfile.GFile(target, "rb") as handle:
            if handle.read() == data:
                return
        logging.warning(
            "%s read back differently after uploading it (attempt %d of %d)", target, attempt, attempts
        )
    raise TransientError(f"{target}: uploaded {attempts} times, never read back intact")
