"""Shared fixtures: tiny photo folders and shards made on the fly (tests never need ../shared)."""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    """Two logical CPUs so MirroredStrategy can run two replicas without a GPU (before any TF op), in
    each process that runs tests: not in xdist's controller, which only schedules them and would
    hold the workers back by the seconds TensorFlow takes to import."""
    if getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput"):
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker more than cores (pytest.ini caps it at 4). The system tests spend part of
    their time waiting on real processes (retry waits, peers' heartbeats, servers starting), which a
    spare worker fills: on 2 cores the suite took 352 s with three workers, 384 s with two."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores + 1


def make_photo(seed: int, size=(64, 48)) -> np.ndarray:
    """A colourful synthetic photo: smooth gradients plus a few solid rectangles."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([x, y, 1 - x], axis=-1) * rng.uniform(0.3, 1.0, 3)
    for _ in range(3):
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        base[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(0, 1, 3)
    return (base * 255).clip(0, 255).astype(np.uint8)


def write_photos(folder, count: int, start: int = 0, fmt: str = "png"):
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(start, start + count):
        name = f"photo{i:03d}.{fmt}"
        Image.fromarray(make_photo(i)).save(os.path.join(folder, name))
        names.append(name)
    return names


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Each strategy numbers its collective ops from the same start; two strategies in one process
    can collide in TF's process-wide collective state, so tests share this one.
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory):
    """train (12 examples, 3 shards) and validation (4 examples, 1 shard) made by trainer.data.prepare."""
    from trainer.data.prepare import prepare
    from trainer.data.prepare_config import PrepareConfig

    root = tmp_path_factory.mktemp("data")
    write_photos(root / "train_photos", 12)
    write_photos(root / "val_photos", 4, start=100)
    out = str(root / "shards")
    prepare(PrepareConfig(str(root / "train_photos"), out, split="train", num_shards=3, progress=False))
    prepare(PrepareConfig(str(root / "val_photos"), out, split="validation", num_shards=1, progress=False))
    return out


@pytest.fixture(scope="session")
def prepared_photos(tmp_path_factory) -> str:
    """24 photos prepared by the real `trainer.prepare` CLI (tests.workers.prepare_data), shared by the
    tests that run the trainer CLI on them; a test that damages the data works on its own copy."""
    from tests.workers import prepare_data

    return prepare_data(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> str:
    """One small untrained export (U-Net of 4 base filters, lab) for tests that only read it: the path
    of its version folder, inside an export folder of its own."""
    from trainer.serve import export, preprocess
    from trainer.train.models import build_model

    model = build_model("unet", preprocess.output_channels("lab"), base_filters=4)
    return export.export_saved_model(
        model, "lab", str(tmp_path_factory.mktemp("tiny") / "export"), {"model": "unet"}
    )


@pytest.fixture(autouse=True)
def _logger_levels_restored():
    """Puts back the absl and tensorflow loggers' levels: a CLI run in-process sets them from its
    --verbosity, which would hide INFO records from a later test's caplog."""
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def _no_leftover_workers():
    """Kills trainer workers a failed test left running: they would slow every later test."""
    yield
    from tests import workers

    workers.kill_leftovers()
