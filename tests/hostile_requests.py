"""Requests that must get a quick InvalidArgument (HTTP 400) from an export, never a crash or a huge bill.

Shared by the in-process test (tests/test_export.py) and the serving-runtime test, which feeds the
same tensors through TF_SessionRun in the serving image's TensorFlow (tests/test_serving_runtime.py).
"""

import io
import struct
import zlib

import numpy as np
from PIL import Image

from trainer.data.schema import IMAGE_SIZE
from trainer.serve.limits import MAX_BATCH, MAX_JPEG_SCANS


def png_bomb(width: int, height: int) -> bytes:
    """A valid gray PNG of width x height zeros: a few hundred KB that decode to width * height floats."""
    compressor, row = zlib.compressobj(9), b"\0" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def gif_with_a_larger_frame(side: int) -> bytes:
    """A GIF whose logical screen says 1x1 but whose one frame is side x side (TF decodes the frame)."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", 1, 1)
    return bytes(data)


def animated_gif(frames: int, side: int) -> bytes:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (side, side), np.uint8)) for _ in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def jpeg_scan_bomb(extra_scans: int) -> bytes:
    """A progressive JPEG with one of its scans repeated: each repeat costs the decoder a pass over the
    whole image (libjpeg only warns about the bogus progression)."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256), np.uint8)).save(
        buffer, format="JPEG", progressive=True
    )
    data = buffer.getvalue()
    first = data.index(b"\xff\xda")
    scans = [b"\xff\xda" + part for part in data[first:-2].split(b"\xff\xda")[1:]]
    return data[:first] + b"".join(scans) + min(scans, key=len) * extra_scans + b"\xff\xd9"


def bmp_with_a_lying_header(side: int) -> bytes:
    """A 4x4 BMP whose header declares side x side pixels."""
    data = bytearray(encoded("BMP", 4, 4))
    data[18:26] = struct.pack("<ii", side, side)
    return bytes(data)


def encoded(fmt: str, width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _strings(*items) -> np.ndarray:
    return np.array(list(items), dtype=object)


def _gray(*shape) -> np.ndarray:
    return np.zeros(shape, np.float32)


_SHAPE = "is not compatible with expected shape"
_EMPTY = "holds 0 images|empty 'instances'"  # the graph's check, or the REST layer's before it


def hostile_cases(max_pixels: int) -> dict:
    """{case: (signature, {input: array}, regex of the refusal's first line)}; `max_pixels`: the export's."""
    side = int(max_pixels**0.5) + 1
    small = encoded("PNG")
    too_many = f"holds {MAX_BATCH + 1} images"
    cases = {
        "png_bomb": (
            png_bomb(side, side),
            f"image is {side}x{side} pixels, above the limit of {max_pixels} ",
        ),
        "gif_frame_larger_than_screen": (gif_with_a_larger_frame(side), "GIF is not accepted"),
        "gif_animated": (animated_gif(40, 200), "GIF is not accepted"),
        "webp": (encoded("WEBP"), "unsupported image format"),
        "jpeg_scan_bomb": (jpeg_scan_bomb(MAX_JPEG_SCANS), f"scans, above the limit of {MAX_JPEG_SCANS}"),
        "bmp_lying_header": (bmp_with_a_lying_header(int(max_pixels**0.5)), "Input size should match"),
        "truncated_png": (small[: len(small) // 2], "Invalid PNG data"),
    }
    cases = {
        name: ("serving_default", {"image_bytes": _strings(data)}, why) for name, (data, why) in cases.items()
    }
    batches = {
        "bytes_scalar": (np.array(small, dtype=object), _SHAPE),
        "bytes_rank_2": (_strings([small]), _SHAPE),
        "bytes_empty_batch": (_strings(), _EMPTY),
        "bytes_batch_too_large": (_strings(*[small] * (MAX_BATCH + 1)), too_many),
    }
    cases.update(
        {name: ("serving_default", {"image_bytes": data}, why) for name, (data, why) in batches.items()}
    )
    side = IMAGE_SIZE
    tensors = {
        "tensor_scalar": (_gray(), _SHAPE),
        "tensor_rank_1": (_gray(1), _SHAPE),
        "tensor_rank_2": (_gray(1, 1), _SHAPE),
        "tensor_small_image": (_gray(1, 5, 5, 1), _SHAPE),
        "tensor_three_channels": (_gray(1, side, side, 3), _SHAPE),
        "tensor_rank_5": (_gray(1, side, side, 1, 1), _SHAPE),
        "tensor_empty_batch": (_gray(0, side, side, 1), _EMPTY),
        "tensor_batch_too_large": (_gray(MAX_BATCH + 1, side, side, 1), too_many),
        "tensor_int32": (np.zeros((1, side, side, 1), np.int32), "to be float but int32"),
    }
    cases.update({name: ("colorize_tensor", {"gray": data}, why) for name, (data, why) in tensors.items()})
    return cases


def warm_case() -> dict:
    """A request every export answers: run first, so the measured growth excludes first-run set-up."""
    return {"warm": ("serving_default", {"image_bytes": _strings(encoded("JPEG", 640, 480))}, "")}
