"""Bounds what a request may cost before anything is decoded or run: InvalidArgument (HTTP 400) otherwise.

A PNG of a few hundred KB can declare 50,000 x 50,000 pixels; decoding it would allocate tens of
GB and take a TF Serving pod down with every request batched with it. The header says how big a
JPEG, PNG or BMP is, and TensorFlow's decoders allocate exactly that. GIF is refused: its header
gives the logical screen, not the frames TensorFlow decodes (one frame may be far larger, and every
frame of an animation is decoded), so clients send its first frame as PNG (`trainer.client` does).
A progressive JPEG's decoder passes over the whole image once per scan, and a scan can be a few
bytes, so the number of scans is bounded too.
"""

import tensorflow as tf

from trainer.serve.limits import MAX_JPEG_SCANS

_HEAD = 32  # every header field read here lies within the first 32 bytes
GIF_REFUSED = "GIF is not accepted: send its first frame as PNG (trainer.client converts GIFs itself)"
_PNG = (0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A)


def _matches(head: tf.Tensor, magic) -> tf.Tensor:
    return tf.reduce_all(tf.equal(head[: len(magic)], tf.constant(list(magic), tf.int64)))


def _uint(head: tf.Tensor, offset: int, size: int, big_endian: bool) -> tf.Tensor:
    """An unsigned integer of `size` bytes at `offset`."""
    shifts = [8 * (size - 1 - i) if big_endian else 8 * i for i in range(size)]
    return tf.reduce_sum(tf.bitwise.left_shift(head[offset : offset + size], tf.constant(shifts, tf.int64)))


def _bmp_side(head: tf.Tensor, offset: int) -> tf.Tensor:
    """A BMP dimension: a signed little-endian int32 (negative height = rows stored top-down)."""
    value = _uint(head, offset, 4, big_endian=False)
    return tf.abs(tf.where(value >= 2**31, value - 2**32, value))


def header_dimensions(image_bytes: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 of a JPEG, PNG or BMP file, read from its header without decoding.

    Offsets are the ones TensorFlow's own decoders read (PNG IHDR, BMP BITMAPINFOHEADER); JPEG's
    frame header is found by `tf.io.extract_jpeg_shape`. Other formats (GIF, WebP, none) give (-1, -1).
    """
    padded = tf.strings.join([tf.strings.substr(image_bytes, 0, _HEAD), "\0" * _HEAD])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, _HEAD), tf.uint8), tf.int64)
    png, bmp = _matches(head, _PNG), _matches(head, b"BM")
    height = tf.where(png, _uint(head, 20, 4, True), tf.where(bmp, _bmp_side(head, 22), -1))
    width = tf.where(png, _uint(head, 16, 4, True), tf.where(bmp, _bmp_side(head, 18), -1))
    return tf.cond(
        _matches(head, (0xFF, 0xD8, 0xFF)),
        lambda: tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64),
        lambda: tf.stack([height, width]),
    )


def jpeg_scans(image_bytes: tf.Tensor) -> tf.Tensor:
    """How many start-of-scan markers (FF DA) a file holds: entropy-coded data never contains them."""
    return tf.size(tf.strings.split(image_bytes, sep=b"\xff\xda"), out_type=tf.int64) - 1


def check_image_size(image_bytes: tf.Tensor, max_pixels: int) -> tf.Operation:
    """An op that fails with InvalidArgument naming the limit if the image is too large or not supported.

    Run it (as a control dependency) before decoding, so nothing is allocated for a refused image.
    """
    dims = header_dimensions(image_bytes)
    supported = tf.reduce_all(dims > 0)
    pixels = tf.reduce_prod(dims)
    gif = tf.strings.substr(image_bytes, 0, 4) == "GIF8"
    jpeg = tf.strings.substr(image_bytes, 0, 3) == b"\xff\xd8\xff"
    scans = tf.cond(jpeg, lambda: jpeg_scans(image_bytes), lambda: tf.constant(0, tf.int64))
    return tf.group(
        tf.debugging.Assert(
            scans <= MAX_JPEG_SCANS,
            [tf.strings.format("JPEG has {} scans, above the limit of {}", (scans, MAX_JPEG_SCANS))],
        ),
        tf.debugging.Assert(tf.logical_not(gif), [GIF_REFUSED]),
        tf.debugging.Assert(
            tf.logical_or(gif, supported), ["unsupported image format: send JPEG, PNG or BMP"]
        ),
        tf.debugging.Assert(
            tf.logical_or(tf.logical_not(supported), pixels <= max_pixels),
            [
                tf.strings.format(
                    "image is {}x{} pixels, above the limit of {} pixels this model was exported with",
                    (dims[1], dims[0], max_pixels),
                )
            ],
        ),
    )


def check_batch_size(batch: tf.Tensor, max_batch: int) -> tf.Operation:
    """An op that fails with InvalidArgument unless the batch holds 1 to `max_batch` items."""
    count = tf.shape(batch, out_type=tf.int64)[0]
    return tf.debugging.Assert(
        tf.logical_and(count >= 1, count <= max_batch),
        [tf.strings.format("a request holds {} images; send 1 to {} at a time", (count, max_batch))],
    )
