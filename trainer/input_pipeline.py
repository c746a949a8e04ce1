"""tf.data input: find and verify shards, then read, decode and batch them as uint8."""

import dataclasses
import posixpath

import tensorflow as tf
from absl import logging

from trainer.errors import DataError, first_line, storage_errors
from trainer.schema import FEATURES, decode_pair, parse_shard_name, read_manifest

_READ_BUFFER_BYTES = 8 << 20  # large reads amortise object-storage latency


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """The shards a pattern matched, checked against their split's manifest."""

    pattern: str
    files: tuple
    num_examples: int
    encoding: str


def find_shards(pattern: str) -> ShardSet:
    """Globs `pattern` and checks the match against the manifest, so a missing shard is an error.

    Storage that stays unavailable is a TransientError (a restart may succeed); anything else the
    storage says (a missing bucket, a denied permission) is a DataError.
    """
    try:
        with storage_errors(pattern):
            files = sorted(tf.io.gfile.glob(pattern))
    except tf.errors.OpError as exc:
        raise DataError(f"{pattern}: {first_line(exc.message)}") from None
    if not files:
        raise DataError(f"no files match {pattern}")
    names = [parse_shard_name(f) for f in files]
    bad = [f for f, n in zip(files, names) if n is None]
    if bad:
        raise DataError(f"{bad[0]} is not a shard name ({{split}}-{{index:05d}}-of-{{count:05d}}.tfrecord)")
    splits = {n[0] for n in names}
    directories = {posixpath.dirname(f) for f in files}
    if len(splits) > 1 or len(directories) > 1:
        raise DataError(
            f"{pattern} matches several splits or folders: {', '.join(sorted(splits | directories))}"
        )
    try:
        with storage_errors(f"{pattern}: manifest"):
            manifest = read_manifest(directories.pop(), splits.pop())
    except tf.errors.OpError as exc:
        raise DataError(f"{pattern}: manifest unreadable: {first_line(exc.message)}") from None
    found = {posixpath.basename(f) for f in files}
    missing = sorted(set(manifest.shards) - found)
    if missing:
        raise DataError(f"{pattern}: incomplete dataset, {len(missing)} shard(s) missing, e.g. {missing[0]}")
    stale = sorted(found - set(manifest.shards))
    if stale:
        raise DataError(f"{pattern}: {stale[0]} is not in the split's manifest (left from an older prepare?)")
    return ShardSet(pattern, tuple(files), manifest.num_examples, manifest.encoding)


# What reading a damaged or vanished shard raises; `find_corrupt_record` then names the shard.
CORRUPT_RECORD_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError)


def parse_record(record: tf.Tensor, encoding: str):
    """One serialized example -> (gray uint8 [120,120,1], colour uint8 [120,120,3])."""
    example = tf.io.parse_single_example(record, FEATURES)
    return decode_pair(example["gray"], example["color"], encoding)


def build_dataset(
    shards: ShardSet,
    global_batch_size: int,
    training: bool,
    shuffle_buffer: int = 2048,
    seed=None,
    num_workers: int = 1,
) -> tf.data.Dataset:
    """Endless full batches of uint8 (gray [N,H,W,1], colour [N,H,W,3]); `training` shuffles files, examples.

    The host only reads, parses and decodes: conversion to float, flips and colour-space targets
    run on the training device inside the step (`preprocess.model_pair`, `trainer.augment`), where
    they cost a few percent of the step instead of most of the host's cores (docs/SCALING.md).
    uint8 also crosses to the device in a quarter of float32's bytes.

    Both splits repeat and drop partial batches so every worker runs the same number of steps
    (an uneven last batch would stall a multi-worker collective); callers count steps.

    Batches hold the GLOBAL batch: `strategy.experimental_distribute_dataset` splits them across
    replicas and prefetches them to the devices.
    """
    policy = shard_policy(len(shards.files), num_workers, shards.pattern)
    if policy == tf.data.experimental.AutoShardPolicy.DATA and seed is None:
        seed = 0  # every worker must shuffle alike, or DATA sharding would repeat and skip examples
    files = tf.data.Dataset.from_tensor_slices(list(shards.files))
    if training:
        files = files.shuffle(len(shards.files), seed=seed, reshuffle_each_iteration=True)
    files = files.repeat()
    records = files.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=_READ_BUFFER_BYTES),
        cycle_length=min(len(shards.files), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training,
    )
    if training:
        records = records.shuffle(shuffle_buffer, seed=seed)

    pairs = records.map(
        lambda record: parse_record(record, shards.encoding), num_parallel_calls=tf.data.AUTOTUNE
    )
    batches = pairs.batch(global_batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def shard_policy(num_files: int, num_workers: int, pattern: str = "") -> tf.data.experimental.AutoShardPolicy:
    """FILE sharding (each worker reads its own shards) needs at least one shard per worker.

    With fewer shards every worker reads everything and keeps 1/N of the examples (DATA): correct,
    but N times the reading.
    """
    if num_workers <= 1 or num_files >= num_workers:
        return tf.data.experimental.AutoShardPolicy.FILE
    logging.warning(
        "%s: %d shard(s) for %d workers; every worker reads all data. Prepare at least %d shards "
        "(--num_shards) for file sharding.",
        pattern,
        num_files,
        num_workers,
        num_workers,
    )
    return tf.data.experimental.AutoShardPolicy.DATA


def find_corrupt_record(shards: ShardSet):
    """Reads every shard on its own and returns 'shard (record i): reason' for the first bad or missing one.

    Only called after the pipeline failed: interleaved reads cannot say which file broke.
    """
    for path in shards.files:
        index = 0
        try:
            for record in tf.data.TFRecordDataset(path):
                parse_record(record, shards.encoding)
                index += 1
        except CORRUPT_RECORD_ERRORS as exc:
            return f"{path} (record {index}): {first_line(exc.message)}"
    return None
