"""trainer.data.images: Pillow-only decoding of one photo pair."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.hostile_requests import png_bomb
from trainer.data import images


def test_pairs_are_squashed_and_encoded(tmp_path):
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(tmp_path / "a.png")
    gray, color = images.load_pair(str(tmp_path / "a.png"), None, 12, "raw")
    assert len(gray) == 12 * 12 and len(color) == 12 * 12 * 3


def test_decompression_bomb_is_a_value_error_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb(15000, 12000))  # 180 M pixels in ~200 KB
    with pytest.raises(ValueError, match="decompression bomb"):
        images.load_pair(str(tmp_path / "bomb.png"), None, 120, "png")


@pytest.mark.parametrize("fmt", ["TGA", "PPM", "ICO"])
def test_only_photo_decoders_are_reached_whatever_the_name(tmp_path, fmt):
    """A file Pillow could decode in another format, named like a photo, is unreadable (OSError)."""
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "photo.png", format=fmt)
    with pytest.raises(OSError, match="cannot identify image file"):
        images.load_pair(str(tmp_path / "photo.png"), None, 12, "raw")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP"])
def test_photo_formats_decode(tmp_path, fmt):
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "photo", format=fmt)
    gray, _ = images.load_pair(str(tmp_path / "photo"), None, 12, "raw")
    assert len(gray) == 12 * 12


def test_a_photo_is_read_as_displayed_whatever_its_exif_orientation(tmp_path):
    """A phone stores a portrait photo sideways with an EXIF orientation; prepare turns it upright."""
    top_dark = np.concatenate([np.full((20, 60, 3), 20, np.uint8), np.full((40, 60, 3), 230, np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down
    Image.fromarray(top_dark[::-1]).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    _, color = images.load_pair(str(tmp_path / "phone.jpg"), None, 12, "raw")
    pixels = np.frombuffer(color, np.uint8).reshape(12, 12, 3)
    assert pixels[0].mean() < 60 and pixels[-1].mean() > 200


@pytest.mark.parametrize(
    "mode, pixels, expected",
    [
        ("I;16", np.array([[0, 257 * 100, 65535]], np.uint16), [0, 100, 255]),  # a 16-bit scan
        ("F", np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # a float TIFF in [0, 1]
        ("I", np.array([[0, 100, 255]], np.int32), [0, 100, 255]),  # 32-bit holding 8-bit values
    ],
)
def test_deep_gray_is_sent_over_its_real_range_not_clipped(mode, pixels, expected, tmp_path):
    """Pillow's convert("L") clips 16-bit values at 255: a 16-bit scan would be sent all white."""
    picture = Image.fromarray(pixels)
    assert picture.mode == mode
    picture.save(tmp_path / "deep.tif")
    sent = images.request_bytes((tmp_path / "deep.tif").read_bytes(), "deep.tif")
    with Image.open(io.BytesIO(sent)) as png:
        assert png.mode == "L" and np.asarray(png).tolist() == [expected]
