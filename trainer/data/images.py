"""Photo files with Pillow only: encoded 120x120 gray/colour pairs for `trainer.prepare`, and what
`trainer.client` sends for a photo (`request_bytes`: the picture as displayed, in a format serving
decodes).

Kept free of TensorFlow so `trainer.prepare`'s worker processes and the HTTP client start in
milliseconds.
"""

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps

from trainer.errors import DataError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# The decoders a photo may reach, whatever its name says: Pillow would otherwise try every format it
# knows (PSD, FITS, ...) on untrusted files. (JPEG's opener also reads the MPO files of cameras.)
PHOTO_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

SENT_AS_IS = ("JPEG", "PNG", "BMP")  # what serving_default decodes
PLAIN_MODES = ("L", "LA", "RGB", "RGBA", "P", "PA")  # 8-bit pixels TF's decoders read as shown
_ORIENTATION = 0x0112  # EXIF tag: 1 is upright

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


def _unreadable(name: str, exc: Exception) -> DataError:
    return DataError(f"{name}: not a readable image ({type(exc).__name__}: {first_line(str(exc))})")


def frame_pixels(image) -> int:
    """The pixels Pillow allocates for an image's first frame: for a GIF its canvas (Pillow widens
    the header's logical screen to the frame), or the frame's own extents where they reach further."""
    width, height = image.size
    if image.format == "GIF":
        for tile in image.tile:
            width, height = max(width, tile[1][2]), max(height, tile[1][3])
    return width * height


def pixel_limit(max_pixels: int) -> int:
    """At most `max_pixels`; with the check off (0), Pillow's decompression-bomb limit (~179 M
    pixels), kept even where Image.MAX_IMAGE_PIXELS was unset: a picture converted here is decoded here."""
    return max_pixels or 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


def png_mode(picture) -> str:
    """RGBA where the picture has transparency, L for gray (or a gray palette), else RGB."""
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        return "RGBA"
    if picture.mode in ("L", "1"):
        return "L"
    palette = picture.getpalette("RGB") if picture.mode == "P" else None
    gray = palette is not None and palette[0::3] == palette[1::3] == palette[2::3]
    return "L" if gray else "RGB"


def to_8_bit(picture):
    """16-bit, 32-bit and float gray as 8-bit gray over their real range (Pillow's convert("L")
    clips such pixels at 255): 16-bit (and 32-bit holding more than 255) as 65535 = 255, float
    at most 1.0 as 1.0 = 255. Other modes as they are."""
    if picture.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return picture
    pixels = np.asarray(picture, np.float64)
    top = pixels.max(initial=0.0)
    if picture.mode == "F" and top <= 1.0:
        scale = 255.0
    elif picture.mode in ("I", "F") and top <= 255:
        scale = 1.0
    else:
        scale = 1 / 257
    return Image.fromarray((pixels * scale).round().clip(0, 255).astype(np.uint8), "L")


def request_bytes(data: bytes, name: str, max_pixels: int = 0) -> bytes:
    """What is sent for a photo file's bytes: the file itself, or a PNG of the picture as displayed.

    A one-line DataError for a file Pillow can't read or with more pixels than `max_pixels`.
    """
    limit = pixel_limit(max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as image:
            pixels = frame_pixels(image)
            if pixels > limit:
                raise DataError(f"{name}: {pixels} pixels, more than {limit} (--max_pixels)")
            upright = image.getexif().get(_ORIENTATION, 1) == 1
            if image.format in SENT_AS_IS and image.mode in PLAIN_MODES and upright:
                return data
            image.seek(0)
            image.load()
            picture = to_8_bit(ImageOps.exif_transpose(image))
            picture = picture.convert(png_mode(picture))
    except Image.DecompressionBombError as exc:  # not an OSError
        raise DataError(f"{name}: {first_line(str(exc))}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises for a damaged file
        raise _unreadable(name, exc) from None
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def side_by_side(sent: bytes, colorized: bytes) -> bytes:
    """gray | colour as one PNG: the picture that was sent, in gray, left of the colorized one."""
    with Image.open(io.BytesIO(sent)) as gray, Image.open(io.BytesIO(colorized)) as colour:
        canvas = Image.new("RGB", (colour.width * 2, colour.height))
        canvas.paste(gray.convert("L").convert("RGB").resize(colour.size), (0, 0))
        canvas.paste(colour.convert("RGB"), (colour.width, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
