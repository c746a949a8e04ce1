"""What one serving request may cost, and what that asks of a serving container; where the packaged
starter model lies. No TensorFlow here: the launcher and the client read these too. docs/SERVING.md
"Limits" tabulates the numbers.
"""

import os

# The model shipped in the package (scripts/train_starter.sh): one version folder's contents, named
# `starter` wherever a model path is taken (a path of that name wins).
STARTER = "starter"
STARTER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), STARTER)

# A 50-megapixel camera writes 8688 x 5792 = 50.3 M pixels; exports refuse larger images
# (`--max_pixels`, checked from the header by trainer/serve/image_limits.py).
DEFAULT_MAX_PIXELS = 51_000_000
MAX_JPEG_SCANS = 64  # encoders write 1 (baseline) to about 20; an EXIF thumbnail adds its own
MAX_BATCH = 64  # images per call of either signature; TF Serving's max_batch_size must not exceed it
# What one `serving_default` call costs above idle, per pixel of its largest image (decode, full-size
# L*a*b* composition, PNG encode), and per pixel of every other image of its batch (a gray copy that
# waits for the batch, a PNG answer that waits for the rest); measured by benchmarks/serving_memory.py
# on the default U-Net (53-61 and 7-9 bytes; docs/PERFORMANCE.md) and rounded up.
COMPOSITION_BYTES_PER_PIXEL = 64
RETAINED_BYTES_PER_PIXEL = 10
# A loaded, warm default export (114 MB measured in-process) plus an allowance of 512 MiB for TF
# Serving's own process, which can't run here.
IDLE_BYTES = 640 * 2**20


def serving_memory_bytes(max_pixels: int, batch_threads: int, max_batch_size: int) -> int:
    """Peak memory of a TF Serving container whose every batch thread runs a full batch at the limit.

    Batch threads run at once, each on up to `max_batch_size` images (requests merged by TF Serving's
    batching), each image up to `max_pixels`; a batch composes one image at a time.
    """
    per_batch = COMPOSITION_BYTES_PER_PIXEL * max_pixels + RETAINED_BYTES_PER_PIXEL * max_pixels * (
        max_batch_size - 1
    )
    return batch_threads * per_batch + IDLE_BYTES
