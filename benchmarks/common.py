"""Timing, noise and machine helpers shared by the benchmark sections.

Figures are medians of repeated runs; compared variants run interleaved (A B A B ...) so both see
the same background load from other jobs on the machine, which makes their ratio trustworthy even
when the absolute numbers drift.
"""

import os
import platform
import statistics
import time

import numpy as np
import tensorflow as tf
from PIL import Image


def load_average() -> float:
    """The 1-minute load average (how busy the machine was while measuring)."""
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Waits up to `max_wait_s` for the 1-minute load to drop below `max_load`; returns the load seen."""
    deadline = time.monotonic() + max_wait_s
    load = load_average()
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(5)
        load = load_average()
    return load


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to the platform string)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What a reader needs to judge the numbers: CPU, cores, library versions, load."""
    import keras

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "tf_version": tf.__version__,
        "keras_version": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": load_average(),
    }


def timed(fn) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(variants: dict, repeats: int) -> dict:
    """Runs every variant once per round (A B A B ...); returns {name: [seconds per round]}."""
    seconds = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            seconds[name].append(timed(fn))
    return seconds


def median_rate(work: float, seconds: list) -> float:
    """Median throughput (`work` per run / seconds) over the runs."""
    return statistics.median(work / s for s in seconds)


def median_ratio(numerator: list, denominator: list, work_num: float = 1.0, work_den: float = 1.0) -> float:
    """Median over rounds of rate(numerator) / rate(denominator): pairs share the same noise."""
    return statistics.median((work_num / a) / (work_den / b) for a, b in zip(numerator, denominator))


def percentile_ms(seconds: list, q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def synthetic_photo(seed: int, size=(320, 240)) -> np.ndarray:
    """A photo-like image: smooth gradients, solid shapes and sensor-like noise.

    The noise keeps PNG sizes close to real photos' (a pure gradient compresses unrealistically
    well, which would flatter the PNG encoding's read and decode rates).
    """
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([x, y, 1 - x], axis=-1) * rng.uniform(0.3, 1.0, 3)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - w // 4), rng.integers(0, h - h // 4)
        base[y0 : y0 + h // 4, x0 : x0 + w // 4] = rng.uniform(0, 1, 3)
    base += rng.normal(0.0, 0.04, base.shape)
    return (base * 255).clip(0, 255).astype(np.uint8)


def write_synthetic_photos(folder: str, count: int, size=(320, 240)) -> str:
    """Writes `count` synthetic JPEG photos into `folder`; returns it."""
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        Image.fromarray(synthetic_photo(i, size)).save(os.path.join(folder, f"photo{i:04d}.jpg"), quality=90)
    return folder
