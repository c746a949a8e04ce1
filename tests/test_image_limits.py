"""Image sizes read from headers, and the limit that keeps one request from taking a serving pod down."""

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import REPO
from trainer.image_limits import check_image_size, header_dimensions


def _encode(fmt, width=37, height=23):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid gray PNG of width x height zeros: a few hundred KB that decode to width * height floats."""
    compressor, row = zlib.compressobj(9), b"\0" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_header_dimensions_match_the_decoder(fmt):
    data = _encode(fmt)
    assert header_dimensions(tf.constant(data)).numpy().tolist() == [23, 37]
    assert tf.io.decode_image(data, expand_animations=False).shape[:2] == (23, 37)


def test_top_down_bmp_has_positive_height():
    data = bytearray(_encode("BMP"))
    data[22:26] = struct.pack("<i", -23)
    assert header_dimensions(tf.constant(bytes(data))).numpy().tolist() == [23, 37]


@pytest.mark.parametrize("data", [b"", b"\x89PNG", b"garbage!" * 8, _encode("WEBP")])
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
        tf.errors.InvalidArgumentError, match="unsupported image format: send JPEG, PNG, GIF or BMP"
    ):
        _check(_encode("WEBP"), 10**9)


_SERVE_BOMB = """
import resource, sys, time
import tensorflow as tf
from tests.test_image_limits import png_bomb, _encode
loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serving_default"]
serve(image_bytes=tf.constant([_encode("PNG", 640, 480)]))  # warm: traced and allocated once
bomb = png_bomb(40000, 40000)
before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
try:
    serve(image_bytes=tf.constant([bomb]))
    print("served")
except tf.errors.InvalidArgumentError as exc:
    print("refused", " ".join(exc.message.split()))
elapsed = time.perf_counter() - start
grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(len(bomb), elapsed, grown_mib)
"""


def test_serving_refuses_a_decompression_bomb_fast_and_small(tmp_path):
    from trainer import export
    from trainer.models import build_model

    path = export.export_saved_model(build_model("unet", 2, base_filters=4), "lab", str(tmp_path))
    run = subprocess.run(
        [sys.executable, "-c", _SERVE_BOMB, path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    verdict, numbers = run.stdout.strip().splitlines()[-2:]
    size, seconds, grown_mb = (float(n) for n in numbers.split())
    assert verdict.startswith("refused") and "40000x40000" in verdict, run.stdout
    assert size < 2_000_000 and seconds < 1.0 and grown_mb < 200, (size, seconds, grown_mb)
