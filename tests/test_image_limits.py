"""Image sizes read from headers, and the limit that keeps one request from taking a serving pod down."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.hostile_requests import gif_with_a_larger_frame, jpeg_scan_bomb
from trainer.serve.image_limits import check_image_size, header_dimensions, jpeg_scans
from trainer.serve.limits import MAX_JPEG_SCANS


def _encode(fmt, width=37, height=23):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_header_dimensions_match_the_decoder(fmt):
    data = _encode(fmt)
    assert header_dimensions(tf.constant(data)).numpy().tolist() == [23, 37]
    assert tf.io.decode_image(data, expand_animations=False).shape[:2] == (23, 37)


def test_top_down_bmp_has_positive_height():
    data = bytearray(_encode("BMP"))
    data[22:26] = struct.pack("<i", -23)
    assert header_dimensions(tf.constant(bytes(data))).numpy().tolist() == [23, 37]


@pytest.mark.parametrize("data", [b"", b"\x89PNG", b"garbage!" * 8, _encode("WEBP"), _encode("GIF")])
def test_unsupported_or_truncated_headers_are_not_sized(data):
    assert header_dimensions(tf.constant(data)).numpy().tolist() == [-1, -1]


def _check(data, max_pixels):
    @tf.function
    def run(image_bytes):
        with tf.control_dependencies([check_image_size(image_bytes, max_pixels)]):
            return tf.identity(image_bytes)

    return run(tf.constant(data))


def test_limit_names_the_size_and_the_limit():
    _check(_encode("PNG"), 23 * 37)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="image is 37x23 pixels, above the limit of 850 pixels this model was exported with",
    ):
        _check(_encode("PNG"), 850)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="unsupported image format: send JPEG, PNG or BMP"
    ):
        _check(_encode("WEBP"), 10**9)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="GIF is not accepted: send its first frame as PNG"
    ):
        _check(_encode("GIF"), 10**9)


def test_a_progressive_jpeg_within_the_scan_limit_decodes_and_one_above_it_is_refused():
    own = int(jpeg_scans(tf.constant(jpeg_scan_bomb(0))))
    assert own > 1
    _check(jpeg_scan_bomb(MAX_JPEG_SCANS - own), 10**9)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"JPEG has {MAX_JPEG_SCANS + 1} scans"):
        _check(jpeg_scan_bomb(MAX_JPEG_SCANS - own + 1), 10**9)


def test_only_jpeg_scans_count():
    """FF DA is a JPEG marker, but any byte pair in other formats: a PNG full of them is served."""
    png = _encode("PNG")
    text = struct.pack(">I", 200) + b"tEXt" + b"x\0" + b"\xff\xda" * 99
    with_text = png[:33] + text + struct.pack(">I", zlib.crc32(text[4:])) + png[33:]
    assert tf.io.decode_png(with_text).shape == (23, 37, 3)
    _check(with_text, 10**9)


def test_a_gif_is_refused_before_its_frame_is_decoded():
    """A GIF's header gives its logical screen, not the frame TensorFlow decodes: a 1x1 screen can
    hold a frame of any size. So GIF is refused whatever it declares, in a fraction of a second."""
    gif = gif_with_a_larger_frame(8000)  # built outside the timing: Pillow's encode is not serving's work
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError, match="GIF is not accepted"):
        _check(gif, 10**9)
    assert time.perf_counter() - start < 1.0
