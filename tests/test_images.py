"""trainer.images: Pillow-only decoding of one photo pair."""

import numpy as np
import pytest
from PIL import Image

from tests.hostile_requests import png_bomb
from trainer import images


def test_pairs_are_squashed_and_encoded(tmp_path):
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(tmp_path / "a.png")
    gray, color = images.load_pair(str(tmp_path / "a.png"), None, 12, "raw")
    assert len(gray) == 12 * 12 and len(color) == 12 * 12 * 3


def test_decompression_bomb_is_a_value_error_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb(15000, 12000))  # 180 M pixels in ~200 KB
    with pytest.raises(ValueError, match="decompression bomb"):
        images.load_pair(str(tmp_path / "bomb.png"), None, 120, "png")
