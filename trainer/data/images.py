"""Photo files -> encoded 120x120 gray/colour pairs, with Pillow only.

Kept free of TensorFlow so `trainer.prepare`'s worker processes start in milliseconds.
"""

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# The decoders a photo may reach, whatever its name says: Pillow would otherwise try every format it
# knows (PSD, FITS, ...) on untrusted files. (JPEG's opener also reads the MPO files of cameras.)
PHOTO_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

# A truncated JPEG must be reported as unreadable, not silently padded with gray.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _open(path: str, mode: str, size: int) -> Image.Image:
    """Decodes fully and squashes the WHOLE image to size x size (no crop), as the seed did.

    Pillow reads the header first and refuses images over 2 x Image.MAX_IMAGE_PIXELS (~179 M
    pixels, ~540 MB decoded) as decompression bombs: that is a ValueError for the file here.

    Pillow's bilinear filter widens its support when downscaling, i.e. it antialiases like
    `tf.image.resize(..., antialias=True)`, which serving uses for the same step.
    """
    try:
        opened = Image.open(path, formats=PHOTO_FORMATS)
    except Image.DecompressionBombError as exc:  # not an OSError: prepare would stop on it
        raise ValueError(str(exc)) from None
    with opened as image:
        image.load()
        image = ImageOps.exif_transpose(image)  # as displayed: phone photos store rotation in EXIF
        if image.mode in ("RGBA", "LA", "P", "PA") and mode == "RGB":
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert(mode)
        return image.resize((size, size), Image.Resampling.BILINEAR)


def pixel_count(path: str) -> int:
    """Width x height from the file's header (Pillow decodes nothing until asked)."""
    try:
        with Image.open(path, formats=PHOTO_FORMATS) as image:
            return image.width * image.height
    except Image.DecompressionBombError:
        return 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1


def read_rgb(path: str) -> np.ndarray:
    """The photo as displayed at its own size, uint8 RGB (the truth evaluation scripts score against)."""
    with Image.open(path, formats=PHOTO_FORMATS) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _encode(image: Image.Image, encoding: str) -> bytes:
    if encoding == "raw":
        return np.asarray(image, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_pair(color_path: str, gray_path, size: int, encoding: str):
    """Returns (gray, colour) encoded as `encoding` ('png' or 'raw' uint8).

    Gray is ITU-R BT.601 luma of the resized colour image (Pillow's 'L' conversion:
    0.299 R + 0.587 G + 0.114 B), unless `gray_path` names a gray version of the same photo.
    Raises OSError or ValueError for unreadable files.
    """
    color = _open(color_path, "RGB", size)
    gray = _open(gray_path, "L", size) if gray_path else color.convert("L")
    return _encode(gray, encoding), _encode(color, encoding)
