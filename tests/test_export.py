import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer import export, preprocess
from trainer.models import build_model


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["lab", "rgb"])
def exported(request, tmp_path_factory):
    color_space = request.param
    model = build_model("unet", preprocess.output_channels(color_space), base_filters=4)
    path = export.export_saved_model(
        model, color_space, str(tmp_path_factory.mktemp("export")), {"model": "unet"}
    )
    return model, color_space, path, tf.saved_model.load(path)


def test_layout_is_an_integer_version_with_metadata(exported):
    _, color_space, path, _ = exported
    assert os.path.basename(path).isdigit()
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path)]
    metadata = json.load(open(os.path.join(path, export.METADATA_FILE)))
    assert metadata["color_space"] == color_space and metadata["max_pixels"] == export.DEFAULT_MAX_PIXELS


def test_next_version_is_above_existing(tmp_path):
    (tmp_path / "99999999999").mkdir()
    assert export.next_version(str(tmp_path)) == 100000000000


def test_tensor_signature_matches_the_model(exported):
    model, color_space, _, loaded = exported
    gray = tf.random.uniform([3, 120, 120, 1], seed=1)
    served = loaded.signatures["colorize_tensor"](gray=gray)["rgb"]
    expected = preprocess.predictions_to_rgb(
        model(preprocess.model_inputs(gray), training=False), gray, color_space
    )
    assert served.shape == (3, 120, 120, 3)
    np.testing.assert_allclose(served.numpy(), expected.numpy(), atol=1e-5)


def test_bytes_signature_returns_png_at_original_size(exported):
    _, _, _, loaded = exported
    gray = (np.random.default_rng(0).uniform(0, 255, (150, 200))).astype(np.uint8)
    requests = [
        _encode(gray, "JPEG"),
        _encode(gray, "PNG"),
        _encode(np.dstack([gray] * 4), "PNG"),
        _encode(np.dstack([gray] * 3)[:90, :70], "BMP"),
        _encode(gray, "GIF"),
    ]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(requests))["colorized_bytes"].numpy()
    shapes = [tf.io.decode_png(png).shape for png in out]
    assert shapes == [(150, 200, 3)] * 3 + [(90, 70, 3), (150, 200, 3)]


def test_lab_output_keeps_full_resolution_structure(tmp_path):
    model = build_model("unet", 2, base_filters=4)
    loaded = tf.saved_model.load(export.export_saved_model(model, "lab", str(tmp_path)))
    gray = np.tile((np.arange(400) % 2 * 255).astype(np.uint8), (300, 1))  # 1-pixel stripes
    png = loaded.signatures["serving_default"](image_bytes=tf.constant([_encode(gray, "PNG")]))[
        "colorized_bytes"
    ][0]
    rgb = tf.io.decode_png(png).numpy().astype(int)
    assert rgb.shape == (300, 400, 3)
    assert (
        np.abs(rgb[:, 1:] - rgb[:, :-1]).mean() > 100
    )  # stripes survive; a 120px round trip would blur them


@pytest.mark.parametrize("payload", [b"garbage", b"", "truncated"])
def test_bad_input_is_invalid_argument(exported, payload):
    _, _, _, loaded = exported
    if payload == "truncated":
        jpeg = _encode(np.zeros((64, 64, 3), np.uint8) + 100, "JPEG")
        payload = jpeg[: len(jpeg) // 2]
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](image_bytes=tf.constant([payload]))


def test_graph_uses_only_builtin_tensorflow_ops(exported):
    _, _, path, _ = exported
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(open(os.path.join(path, "saved_model.pb"), "rb").read())
    graph = saved.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert "DecodeImage" in ops and "EncodePng" in ops
    builtin = set(dir(tf.raw_ops)) | {f.signature.name for f in graph.library.function}
    assert ops <= builtin, ops - builtin
