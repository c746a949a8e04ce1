"""Input pipeline: raw shard reads, decode only, the trainer's host pipeline; scaling knobs; per-stage costs.

The host pipeline is `trainer.data.input_pipeline.build_dataset` itself: read, parse, decode, shuffle
and batch uint8 (float conversion, flips and Lab targets run in the train step, timed in
benchmarks/training.py). Its parallelism is fixed (AUTOTUNE, interleave cycle min(shards, 16)), so
the scaling variants are rebuilt here from the same pieces (`parse_record`) with explicit knobs.
"""

import os
import tempfile

import tensorflow as tf

from benchmarks import common
from trainer.data import input_pipeline
from trainer.data.prepare import prepare
from trainer.data.prepare_config import PrepareConfig
from trainer.train.config import TrainConfig

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = TrainConfig.shuffle_buffer  # what build_dataset shuffles with in training


def make_shards(photo_dir: str, root: str, encoding: str, num_shards: int) -> input_pipeline.ShardSet:
    """Runs `trainer.prepare` with `encoding` into `root/encoding`; returns the verified shards."""
    out = os.path.join(root, encoding)
    prepare(
        PrepareConfig(
            photo_dir,
            out,
            split="train",
            num_shards=num_shards,
            encoding=encoding,
            workers=os.cpu_count() or 1,
            progress=False,
        )
    )
    return input_pipeline.find_shards(os.path.join(out, "train-*"))


def record_bytes(shards: input_pipeline.ShardSet) -> float:
    """Mean bytes on disk per example (TFRecord framing and Example proto included)."""
    return sum(os.path.getsize(f) for f in shards.files) / shards.num_examples


def raw_read(shards, batch: int) -> tf.data.Dataset:
    """The shards' records, read as the pipeline reads them (interleaved, 8 MB buffers), unparsed."""
    files = tf.data.Dataset.from_tensor_slices(list(shards.files)).repeat()
    records = files.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
        cycle_length=min(len(shards.files), 16),
        num_parallel_calls=AUTOTUNE,
        deterministic=False,
    )
    return records.batch(batch).prefetch(AUTOTUNE)


def variant(
    shards,
    batch: int,
    parallel=AUTOTUNE,
    cycle: int = 16,
    threads: int = 0,
    stage: str = "batch",
    shuffle: bool = True,
):
    """`build_dataset`'s host pipeline with explicit knobs, or cut after `stage` for profiling.

    stages: read, parse (Example proto), decode (PNG/raw -> uint8), batch (the whole host pipeline).
    """
    files = tf.data.Dataset.from_tensor_slices(list(shards.files))
    files = (files.shuffle(len(shards.files)) if shuffle else files).repeat()
    ds = files.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
        cycle_length=min(len(shards.files), cycle),
        num_parallel_calls=parallel,
        deterministic=False,
    )
    if stage == "parse":
        ds = ds.map(
            lambda r: tf.io.parse_single_example(r, input_pipeline.FEATURES), num_parallel_calls=parallel
        )
    elif stage != "read":
        ds = ds.map(lambda r: input_pipeline.parse_record(r, shards.encoding), num_parallel_calls=parallel)
    ds = ds.batch(batch, drop_remainder=True, num_parallel_calls=None if stage == "read" else parallel)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return ds.prefetch(AUTOTUNE).with_options(options)


def decode_only(shards, batch: int) -> tf.data.Dataset:
    """Read, parse and decode only (no shuffles), batched so pulling costs the same as the host pipeline's."""
    return variant(shards, batch, shuffle=False)


def puller(dataset: tf.data.Dataset, batches: int, warmup_images: int = 0):
    """A warmed-up iterator and a function that pulls `batches` batches from it.

    `warmup_images`: examples to pull first, e.g. a shuffle buffer's size, so the timed pulls see
    the steady state (a filling buffer reads two examples for each it returns).
    """
    iterator = iter(dataset)
    batch = int(dataset.element_spec[0].shape[0] or 1) if isinstance(dataset.element_spec, tuple) else 1
    for _ in range(max(2, batches // 4, -(-warmup_images // batch) + 2)):
        next(iterator)

    def pull():
        for _ in range(batches):
            next(iterator)

    return pull


def full_pipeline(shards, batch: int) -> tf.data.Dataset:
    """The trainer's own host pipeline for training (shuffled uint8 batches)."""
    return input_pipeline.build_dataset(shards, batch, training=True, shuffle_buffer=SHUFFLE_BUFFER)


def measure_encoding(shards, batch: int, batches: int, repeats: int) -> dict:
    """Raw read, decode only and the host pipeline (interleaved), in images/s and MB/s of stored bytes."""
    per_record = record_bytes(shards)
    raw_batches = batches * 4
    seconds = common.interleave(
        {
            "raw": puller(raw_read(shards, batch), raw_batches),
            "decode_only": puller(decode_only(shards, batch), batches),
            "full": puller(full_pipeline(shards, batch), batches, SHUFFLE_BUFFER),
        },
        repeats,
    )
    raw_rate = common.median_rate(raw_batches * batch, seconds["raw"])
    full_rate = common.median_rate(batches * batch, seconds["full"])
    return {
        "record_bytes": per_record,
        "raw_records_per_s": raw_rate,
        "raw_mb_s": raw_rate * per_record / 1e6,
        "images_per_s": full_rate,
        "mb_s": full_rate * per_record / 1e6,
        "decode_only_images_per_s": common.median_rate(batches * batch, seconds["decode_only"]),
        "host_over_decode_only": common.median_ratio(seconds["full"], seconds["decode_only"]),
        "full_over_raw": common.median_ratio(seconds["full"], seconds["raw"], batches, raw_batches),
    }


SCALING = {
    "threads1_np1_cycle1": dict(parallel=1, cycle=1, threads=1),
    "np1_cycle8": dict(parallel=1, cycle=8),
    "np2_cycle8": dict(parallel=2, cycle=8),
    "autotune_cycle1": dict(cycle=1),
    "autotune_cycle2": dict(cycle=2),
    "autotune_cycle8": dict(cycle=8),
    "autotune_cycle16": dict(cycle=16),
}
STAGES = ("read", "parse", "decode", "batch")


def measure_scaling(shards, batch: int, batches: int, repeats: int, names) -> dict:
    """images/s per parallelism setting in `names`; `threads1_np1_cycle1` is the one-core rate."""
    pulls = {name: puller(variant(shards, batch, **SCALING[name]), batches) for name in names}
    seconds = common.interleave(pulls, repeats)
    return {name: common.median_rate(batches * batch, s) for name, s in seconds.items()}


def measure_stages(shards, batch: int, batches: int, repeats: int) -> dict:
    """Single-thread cost of each stage in microseconds per image (cumulative cut minus the previous)."""
    pulls = {
        stage: puller(variant(shards, batch, parallel=1, cycle=1, threads=1, stage=stage), batches)
        for stage in STAGES
    }
    seconds = common.interleave(pulls, repeats)
    cumulative = {stage: 1e6 / common.median_rate(batches * batch, s) for stage, s in seconds.items()}
    costs, previous = {}, 0.0
    for stage in STAGES:
        costs[stage] = max(0.0, cumulative[stage] - previous)
        previous = cumulative[stage]
    return {"us_per_image": costs, "us_per_image_cumulative": cumulative}


def run(
    photo_dir: str, encodings, num_shards: int, batch: int, batches: int, repeats: int, scaling=tuple(SCALING)
) -> dict:
    """All pipeline figures per encoding; the top-level keys describe the default (png) encoding."""
    result = {"batch": batch, "load_average": common.load_average()}
    with tempfile.TemporaryDirectory(prefix="colorizer-bench-") as root:
        for encoding in encodings:
            shards = make_shards(photo_dir, root, encoding, num_shards)
            entry = measure_encoding(shards, batch, batches, repeats)
            entry["num_examples"], entry["num_shards"] = shards.num_examples, len(shards.files)
            entry["scaling_images_per_s"] = measure_scaling(shards, batch, batches, repeats, scaling)
            entry["stages"] = measure_stages(shards, batch, batches, repeats)
            result[encoding] = entry
    default = result[encodings[0]]
    result.update(
        encoding=encodings[0],
        raw_mb_s=default["raw_mb_s"],
        images_per_s=default["images_per_s"],
        mb_s=default["mb_s"],
        full_over_raw=default["full_over_raw"],
        decode_only_images_per_s=default["decode_only_images_per_s"],
        host_over_decode_only=min(result[e]["host_over_decode_only"] for e in encodings),
        per_core_images_per_s=default["scaling_images_per_s"]["threads1_np1_cycle1"],
    )
    return result
