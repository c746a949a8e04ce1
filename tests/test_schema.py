import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import make_photo
from trainer.data import images, schema
from trainer.errors import DataError


@pytest.mark.parametrize("encoding", schema.ENCODINGS)
def test_example_round_trip(tmp_path, encoding):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(make_photo(1)).save(path)
    gray, color = images.load_pair(str(path), None, schema.IMAGE_SIZE, encoding)
    record = schema.encode_example("a.png", gray, color)
    parsed = tf.io.parse_single_example(record, schema.FEATURES)
    assert parsed["id"].numpy() == b"a.png"
    gray_img, color_img = schema.decode_pair(parsed["gray"], parsed["color"], encoding)
    assert gray_img.shape == (120, 120, 1) and gray_img.dtype == tf.uint8
    assert color_img.shape == (120, 120, 3) and color_img.dtype == tf.uint8
    expected = Image.open(path).convert("RGB").resize((120, 120), Image.BILINEAR)
    np.testing.assert_array_equal(color_img.numpy(), np.asarray(expected))


def test_gray_is_bt601_luma_of_colour(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(make_photo(2)).save(path)
    gray, color = images.load_pair(str(path), None, schema.IMAGE_SIZE, "raw")
    rgb = np.frombuffer(color, np.uint8).reshape(120, 120, 3).astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(np.frombuffer(gray, np.uint8).reshape(120, 120) - luma).max() <= 1.0


def test_shard_names():
    assert schema.shard_name("train", 3, 12) == "train-00003-of-00012.tfrecord"
    assert schema.parse_shard_name("gs://b/x/train-00003-of-00012.tfrecord") == ("train", 3, 12)
    assert schema.parse_shard_name("train-3-of-12.tfrecord") is None
    assert schema.parse_shard_name("train-00000-of-00001.tfrecord.tmp") is None


def test_manifest_round_trip_and_validation():
    manifest = schema.Manifest(
        "train", "png", {"train-00000-of-00002.tfrecord": 5, "train-00001-of-00002.tfrecord": 4}
    )
    again = schema.Manifest.from_json(manifest.to_json(), "m.json")
    assert again == manifest and again.num_examples == 9
    with pytest.raises(DataError, match="m.json"):
        schema.Manifest.from_json("{not json", "m.json")
    with pytest.raises(DataError, match="encoding"):
        schema.Manifest.from_json(manifest.to_json().replace('"png"', '"jpeg"'), "m.json")
    larger = dataclasses.replace(manifest, image_size=240)
    assert schema.Manifest.from_json(larger.to_json(), "m.json").image_size == 240
    with pytest.raises(DataError, match="m.json: schema 1 / size 96, this trainer reads .* size 120 or more"):
        schema.Manifest.from_json(dataclasses.replace(manifest, image_size=96).to_json(), "m.json")
