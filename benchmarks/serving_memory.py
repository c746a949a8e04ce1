"""`python -m benchmarks.serving_memory [EXPORT]`: what one `serving_default` call costs in memory.

Each measurement runs in a fresh process (an allocator that already holds memory hides growth):
  * idle: RSS growth from loading the export and answering its warmup-sized request;
  * composition: peak RSS growth for one image of N pixels, per pixel;
  * retained: the extra peak per pixel of each further image in the same batch (its gray copy waits
    while the batch runs, its PNG answer until the batch ends).
Images are gray noise (the largest PNG answers). Without EXPORT, the default U-Net is exported.
`trainer.serve.limits.serving_memory_bytes` uses these numbers; docs/PERFORMANCE.md records them.
"""

import json
import os
import subprocess
import sys
import tempfile

_MEASURE = """
import io, json, resource, sys
import numpy as np, tensorflow as tf
from PIL import Image

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

def peak_rss():  # VmHWM, this process's own: ru_maxrss keeps a larger parent's peak across exec
    status = open("/proc/self/status").read().splitlines()
    return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

def noise_png(side, seed):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()

images, side = int(sys.argv[2]), int(sys.argv[3])
batch = tf.constant([noise_png(side, seed) for seed in range(images)])
start = rss()
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
serve(image_bytes=tf.constant([noise_png(64, 0)]))
loaded = rss()
if images:
    serve(image_bytes=batch)
peak = peak_rss()
print(json.dumps({"idle": loaded - start, "peak_growth": peak - loaded}))
"""


def measure(saved_model: str, images: int, side: int) -> dict:
    """{"idle", "peak_growth"} bytes of one fresh process serving `images` noise PNGs of side x side."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, saved_model, str(images), str(side)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_pixel(saved_model: str, side: int = 4000, batch: int = 8) -> dict:
    """Bytes per pixel of one composition and of each further image of a batch, and idle bytes."""
    one = measure(saved_model, 1, side)
    many = measure(saved_model, batch, side)
    pixels = side * side
    return {
        "idle_bytes": one["idle"],
        "composition_bytes_per_pixel": one["peak_growth"] / pixels,
        "retained_bytes_per_pixel": (many["peak_growth"] - one["peak_growth"]) / ((batch - 1) * pixels),
    }


def _default_export(folder: str) -> str:
    from trainer.serve import export, preprocess
    from trainer.train.models import build_model

    model = build_model("unet", preprocess.output_channels("lab", "two_heads"))
    return export.export_saved_model(model, "lab", folder)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        path = sys.argv[1] if len(sys.argv) > 1 else _default_export(tmp)
        print(json.dumps(per_pixel(path), indent=2))
