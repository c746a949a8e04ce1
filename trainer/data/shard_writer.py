"""Writes a split's shards so that readers only ever see complete shards.

Local folders: shards are written as `*.tmp` and renamed when all are complete, so a crashed
prepare leaves only `*.tmp` files, never a plausible-looking partial dataset.
Cloud Storage: shards are staged in a local temporary folder and uploaded when complete (an
object appears only once its upload finishes) with generation preconditions (see trainer.data.storage).
"""

import posixpath
import random
import shutil
import tempfile

import tensorflow as tf

from trainer.data import gcs, storage
from trainer.data.schema import manifest_path, parse_shard_name, shard_name
from trainer.errors import DataError


def existing_split_files(output_dir: str, split: str) -> dict:
    """{path: generation} of `split`'s shards and manifest already in `output_dir`."""
    manifest = manifest_path(output_dir, split)
    found = storage.list_generations(output_dir, split)
    return {p: g for p, g in found.items() if p == manifest or (parse_shard_name(p) or ("",))[0] == split}


def publish_manifest(path: str, text: str, existing: dict) -> None:
    """Writes a split's manifest whole, only over the one `existing_split_files` found (or none)."""
    if not storage.write_text(path, text, existing.get(path, 0)):
        raise DataError(
            f"{path}: changed by another writer while this run was writing; nothing was overwritten"
        )


class ShardWriter:
    """Round-robin writer of serialized examples into the shards `indices` of a split of `total`.

    A prepare task owns a range of a split's shard indices; a lone prepare owns them all and, with
    `trim`, keeps only as many as it filled (fewer photos than shards). Each shard's records are
    shuffled (seeded) before it is published, so a shard never holds its photos in listing order.
    `existing` is what `existing_split_files` found: with --overwrite, those objects are replaced
    (or removed, if the new shard count leaves them stale) only if nobody changed them meanwhile.
    """

    def __init__(
        self,
        output_dir: str,
        split: str,
        indices: range,
        total: int,
        existing: dict,
        seed: int = 0,
        trim: bool = False,
    ):
        self.split, self._output_dir, self._existing = split, output_dir, existing
        self._indices, self._total, self._seed, self._trim = indices, total, seed, trim
        self._stage = tempfile.mkdtemp(prefix="colorizer-shards-") if gcs.is_gcs(output_dir) else None
        if not self._stage:
            tf.io.gfile.makedirs(output_dir)
        self._tmp = [
            posixpath.join(self._stage or output_dir, shard_name(split, i, total) + ".tmp") for i in indices
        ]
        self._writers = [tf.io.TFRecordWriter(p) for p in self._tmp]
        self._counts = [0] * len(indices)
        self.bytes = 0
        self._next = 0

    def write(self, serialized: bytes) -> None:
        self._writers[self._next].write(serialized)
        self._counts[self._next] += 1
        self.bytes += len(serialized) + 16  # TFRecord framing: length, two CRCs
        self._next = (self._next + 1) % len(self._writers)

    def _final_names(self) -> list:
        if not self._trim:
            return [shard_name(self.split, i, self._total) for i in self._indices]
        filled = max(1, sum(1 for c in self._counts if c))  # round-robin fills the first ones
        return [shard_name(self.split, i, filled) for i in range(filled)]

    def _shuffle(self, path: str, index: int) -> None:
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        random.Random(self._seed * 1_000_003 + index).shuffle(records)
        with tf.io.TFRecordWriter(path + ".shuffled") as writer:
            for record in records:
                writer.write(record)
        tf.io.gfile.rename(path + ".shuffled", path, overwrite=True)

    def commit(self) -> dict:
        """Publishes the shards and removes the split's stale ones; returns {shard name: count}."""
        for writer in self._writers:
            writer.close()
        names = self._final_names()
        for tmp in self._tmp[len(names) :]:  # trimmed: never filled
            tf.io.gfile.remove(tmp)
        tmps = self._tmp[: len(names)]
        for index, tmp in zip(self._indices, tmps):
            self._shuffle(tmp, index)
        final = [posixpath.join(self._output_dir, n) for n in names]
        old_shards = {p: g for p, g in self._existing.items() if parse_shard_name(p)}
        stale = {p: g for p, g in old_shards.items() if p not in final}
        if self._stage:
            expected = {p: g for p, g in self._existing.items() if p in final}
            gcs.upload(list(zip(tmps, final)), expected)
            gcs.delete(stale)
            shutil.rmtree(self._stage, ignore_errors=True)
        else:
            for path in stale:
                tf.io.gfile.remove(path)
            for tmp, path in zip(tmps, final):
                tf.io.gfile.rename(tmp, path, overwrite=True)
        return dict(zip(names, self._counts))

    def abort(self) -> None:
        for writer, tmp in zip(self._writers, self._tmp):
            writer.close()
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        if self._stage:
            shutil.rmtree(self._stage, ignore_errors=True)
