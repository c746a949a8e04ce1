"""tf.data input: find and verify shards, then read, decode and batch them as uint8."""

import dataclasses
import posixpath

import tensorflow as tf
from absl import logging

from trainer.data.schema import FEATURES, IMAGE_SIZE, decode_pair, parse_shard_name, read_manifest
from trainer.errors import DataError, first_line, storage_errors

_READ_BUFFER_BYTES = 8 << 20  # large reads amortise object-storage latency
# Random crops of larger stored pairs span this share of the stored side up to all of it: with pairs
# stored at 2x the model's size, objects appear at 1x-2x the size serving shows them.
MIN_CROP = 0.5


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """The shards a pattern matched, checked against their split's manifest."""

    pattern: str
    files: tuple
    num_examples: int
    encoding: str
    image_size: int = IMAGE_SIZE  # stored pairs' side; larger than the model's is cropped or resized to it


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
    return ShardSet(pattern, tuple(files), manifest.num_examples, manifest.encoding, manifest.image_size)


# For Dataset.map: the pipeline's functions are plain TF ops with no Python control flow on a tensor,
# so autograph's rewrite of them would only add start-up time to every dataset built.
no_autograph = tf.autograph.experimental.do_not_convert

# What reading a damaged or vanished shard raises; `find_corrupt_record` then names the shard.
CORRUPT_RECORD_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError)


def parse_record(record: tf.Tensor, encoding: str, size: int = IMAGE_SIZE):
    """One serialized example -> (gray uint8 [size,size,1], colour uint8 [size,size,3]) as stored."""
    example = tf.io.parse_single_example(record, FEATURES)
    return decode_pair(example["gray"], example["color"], encoding, size)


def _resize_pair(gray: tf.Tensor, color: tf.Tensor):
    """uint8 gray and colour of any size -> both at the model's size, resized together (antialiased)."""
    both = tf.image.resize(tf.concat([gray, color], -1), [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
    both = tf.cast(tf.clip_by_value(tf.round(both), 0.0, 255.0), tf.uint8)
    return both[..., :1], both[..., 1:]


def parse_for_model(record: tf.Tensor, shards: ShardSet):
    """One example at the model's size: larger stored pairs resized whole (evaluation, decode fit)."""
    gray, color = parse_record(record, shards.encoding, shards.image_size)
    return (gray, color) if shards.image_size == IMAGE_SIZE else _resize_pair(gray, color)


def random_crop_pair(gray: tf.Tensor, color: tf.Tensor, smallest: float = MIN_CROP):
    """A random square crop of both images, its side a share in [smallest, 1] of theirs, at the
    model's size: each epoch shows every photo at another place and scale (docs/QUALITY.md).

    Stateful random ops: file-sharded multi-worker input can't zip in a seed dataset, and training
    input is read in a non-deterministic order anyway.
    """
    stored = tf.shape(gray)[0]
    share = tf.random.uniform([], smallest, 1.0)
    side = tf.maximum(IMAGE_SIZE, tf.cast(share * tf.cast(stored, tf.float32), tf.int32))
    corner = tf.random.uniform([2], 0, stored - side + 1, dtype=tf.int32)
    both = tf.concat([gray, color], -1)[corner[0] : corner[0] + side, corner[1] : corner[1] + side]
    return _resize_pair(both[..., :1], both[..., 1:])


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
    run on the training device inside the step (`preprocess.model_pair`, `trainer.train.augment`), where
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
    if training:  # a buffer beyond the split would only hold repeats, read before the first step
        records = records.shuffle(max(1, min(shuffle_buffer, shards.num_examples)), seed=seed)

    pairs = _model_size_pairs(records, shards, training)
    batches = pairs.batch(global_batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def _model_size_pairs(records: tf.data.Dataset, shards: ShardSet, training: bool) -> tf.data.Dataset:
    """Decoded pairs at the model's size: larger stored pairs are randomly cropped for training and
    resized whole otherwise."""
    if not training or shards.image_size == IMAGE_SIZE:
        return records.map(
            no_autograph(lambda r: parse_for_model(r, shards)), num_parallel_calls=tf.data.AUTOTUNE
        )
    return records.map(
        no_autograph(lambda r: random_crop_pair(*parse_record(r, shards.encoding, shards.image_size))),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


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
                parse_record(record, shards.encoding, shards.image_size)
                index += 1
        except CORRUPT_RECORD_ERRORS as exc:
            return f"{path} (record {index}): {first_line(exc.message)}"
    return None


def pair_batches(shards: ShardSet, batch_size: int, limit: int = 0) -> tf.data.Dataset:
    """The first `limit` pairs (0: all) in file order, as uint8 batches: the same on every worker and
    every run, for scoring (the decode fit, the epoch scores, `trainer.evaluate --data`)."""
    records = tf.data.TFRecordDataset(list(shards.files))
    pairs = records.take(limit) if limit else records
    pairs = pairs.map(
        no_autograph(lambda record: parse_for_model(record, shards)), num_parallel_calls=tf.data.AUTOTUNE
    )
    return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def guard_reads(run, shards: ShardSet):
    """Runs one loop call; a bad record or a vanished shard becomes a DataError naming the shard.

    A shard read that outlasted the storage's retries becomes a TransientError; other errors (a
    lost peer, out of memory) pass through: only the shard's name in the message tells them apart.
    """
    try:
        return run()
    except CORRUPT_RECORD_ERRORS as exc:
        where = find_corrupt_record(shards)
        if where is None:
            raise
        raise DataError(f"unreadable record in {where}") from exc
    except tf.errors.OpError as exc:
        if not any(path in exc.message for path in shards.files):
            raise
        with storage_errors(f"reading {shards.pattern}"):
            raise
