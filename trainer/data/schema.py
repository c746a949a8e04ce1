"""The on-disk format: TFRecord shards of 120x120 gray/colour pairs and a manifest per split.

Pairs may be stored larger (`trainer.prepare --image_size`, the manifest's `image_size`): training
then takes random crops of them, at several scales, down to the model's 120x120.
Every example holds the pair already resized, so the trainer never has to guess how an image was
prepared. Each split has a manifest (`{split}.manifest.json`) beside its shards that records the
example count of every shard: training compares it with the shards it finds to tell a complete
dataset from a truncated one.
"""

import dataclasses
import json
import posixpath
import re

import tensorflow as tf

from trainer.errors import DataError

IMAGE_SIZE = 120
SCHEMA_VERSION = 1
ENCODINGS = ("png", "raw")

# Feature names and their meaning; documented in the README.
FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),  # source file name, for tracing a bad example
    "gray": tf.io.FixedLenFeature([], tf.string),  # SxSx1 uint8 (S = the manifest's image_size), PNG or raw
    "color": tf.io.FixedLenFeature([], tf.string),  # SxSx3 uint8 sRGB, PNG or raw bytes
}

_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")


def shard_name(split: str, index: int, count: int) -> str:
    """`{split}-{index:05d}-of-{count:05d}.tfrecord`, the shard naming every tool here relies on."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def parse_shard_name(path: str):
    """Returns (split, index, count) for a shard path, or None if the name is not a shard name."""
    match = _SHARD_RE.match(posixpath.basename(path))
    if not match:
        return None
    return match["split"], int(match["index"]), int(match["count"])


def manifest_path(directory: str, split: str) -> str:
    return posixpath.join(directory, f"{split}.manifest.json")


def encode_example(example_id: str, gray: bytes, color: bytes) -> bytes:
    """Serializes one pair; `gray` and `color` are already encoded (PNG or raw uint8 bytes)."""

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {"id": _bytes(example_id.encode("utf-8")), "gray": _bytes(gray), "color": _bytes(color)}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def decode_pair(gray: tf.Tensor, color: tf.Tensor, encoding: str, size: int = IMAGE_SIZE):
    """Decodes one example's encoded images to uint8 tensors [size,size,1] and [size,size,3]."""
    if encoding == "png":
        gray_img = tf.io.decode_png(gray, channels=1)
        color_img = tf.io.decode_png(color, channels=3)
    else:
        gray_img = tf.io.decode_raw(gray, tf.uint8)
        color_img = tf.io.decode_raw(color, tf.uint8)
    gray_img = tf.ensure_shape(tf.reshape(gray_img, [size, size, 1]), [size, size, 1])
    color_img = tf.ensure_shape(tf.reshape(color_img, [size, size, 3]), [size, size, 3])
    return gray_img, color_img


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What `trainer.prepare` wrote for one split: per-shard example counts and the encoding."""

    split: str
    encoding: str
    shards: dict  # shard file name -> number of examples
    image_size: int = IMAGE_SIZE
    schema_version: int = SCHEMA_VERSION
    skipped: tuple = ()  # source files that could not be read
    run: str = ""  # prepare tasks only: the identity of the run that wrote it (trainer/data/prepare_tasks.py)

    @property
    def num_examples(self) -> int:
        return sum(self.shards.values())

    def to_json(self) -> str:
        body = dataclasses.asdict(self)
        body["skipped"] = list(self.skipped)
        body["num_examples"] = self.num_examples
        if not self.run:
            del body["run"]
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        try:
            body = json.loads(text)
            manifest = cls(
                split=body["split"],
                encoding=body["encoding"],
                shards={str(k): int(v) for k, v in body["shards"].items()},
                image_size=int(body["image_size"]),
                schema_version=int(body["schema_version"]),
                skipped=tuple(body.get("skipped", ())),
                run=str(body.get("run", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{source}: not a valid manifest ({exc})") from None
        if manifest.schema_version != SCHEMA_VERSION or manifest.image_size < IMAGE_SIZE:
            raise DataError(
                f"{source}: schema {manifest.schema_version} / size {manifest.image_size}, "
                f"this trainer reads schema {SCHEMA_VERSION} / size {IMAGE_SIZE} or more"
            )
        if manifest.encoding not in ENCODINGS:
            raise DataError(f"{source}: unknown encoding {manifest.encoding!r}")
        return manifest


def read_manifest(directory: str, split: str) -> Manifest:
    path = manifest_path(directory, split)
    if not tf.io.gfile.exists(path):
        raise DataError(f"no manifest {path}: shards must be written by `python -m trainer.prepare`")
    with tf.io.gfile.GFile(path, "r") as handle:
        return Manifest.from_json(handle.read(), path)
