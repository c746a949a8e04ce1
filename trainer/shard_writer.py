"""Writes a split's shards under temporary names and renames them only when all are complete.

A reader globbing `{split}-*-of-*.tfrecord` therefore never sees a half-written shard, and a
crashed prepare leaves only `*.tmp` files behind, never a plausible-looking partial dataset.
"""

import posixpath

import tensorflow as tf

from trainer.schema import manifest_path, parse_shard_name, shard_name


def existing_split_files(output_dir: str, split: str):
    """Shards and manifest of `split` already in `output_dir` (any shard count)."""
    if not tf.io.gfile.isdir(output_dir):
        return []
    found = [
        posixpath.join(output_dir, n)
        for n in tf.io.gfile.listdir(output_dir)
        if (parse_shard_name(n) or ("",))[0] == split
    ]
    manifest = manifest_path(output_dir, split)
    return sorted(found) + ([manifest] if tf.io.gfile.exists(manifest) else [])


def write_text_atomic(path: str, text: str) -> None:
    """Writes a small file (the manifest) under a temporary name, then renames it into place."""
    with tf.io.gfile.GFile(path + ".tmp", "w") as handle:
        handle.write(text)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


class ShardWriter:
    """Round-robin writer of serialized examples into `num_shards` shards of one split."""

    def __init__(self, output_dir: str, split: str, num_shards: int):
        tf.io.gfile.makedirs(output_dir)
        self._output_dir, self._split = output_dir, split
        self._names = [shard_name(split, i, num_shards) for i in range(num_shards)]
        self._tmp = [posixpath.join(output_dir, n + ".tmp") for n in self._names]
        self._writers = [tf.io.TFRecordWriter(p) for p in self._tmp]
        self._counts = [0] * num_shards
        self._next = 0

    def write(self, serialized: bytes) -> None:
        self._writers[self._next].write(serialized)
        self._counts[self._next] += 1
        self._next = (self._next + 1) % len(self._writers)

    def commit(self) -> dict:
        """Closes, removes the split's older files, renames into place; returns {shard name: count}."""
        for writer in self._writers:
            writer.close()
        final = [posixpath.join(self._output_dir, n) for n in self._names]
        for old in existing_split_files(self._output_dir, self._split):
            if old not in final:
                tf.io.gfile.remove(old)
        for tmp, path in zip(self._tmp, final):
            tf.io.gfile.rename(tmp, path, overwrite=True)
        return dict(zip(self._names, self._counts))

    def abort(self) -> None:
        for writer, tmp in zip(self._writers, self._tmp):
            writer.close()
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
