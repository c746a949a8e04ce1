import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from trainer.data import input_pipeline
from trainer.errors import DataError, TransientError


def _pattern(directory, split):
    return os.path.join(directory, f"{split}-*-of-*.tfrecord")


def test_find_shards_reads_manifest(shards_dir):
    shards = input_pipeline.find_shards(_pattern(shards_dir, "train"))
    assert len(shards.files) == 3 and shards.num_examples == 12 and shards.encoding == "png"


def test_batches_are_uint8_pairs_nothing_converted_on_the_host(shards_dir):
    shards = input_pipeline.find_shards(_pattern(shards_dir, "train"))
    ds = input_pipeline.build_dataset(shards, 5, training=True)
    gray, color = ds.element_spec
    assert gray.shape.as_list() == [5, 120, 120, 1] and gray.dtype == tf.uint8
    assert color.shape.as_list() == [5, 120, 120, 3] and color.dtype == tf.uint8
    g, c = next(iter(ds))
    assert int(tf.reduce_max(g)) > 1 and int(tf.reduce_max(c)) > 1  # pixel values, not [0, 1]


def test_global_batch_is_split_across_replicas(shards_dir, mirrored):
    strategy = mirrored
    per_replica = 3
    shards = input_pipeline.find_shards(_pattern(shards_dir, "train"))
    ds = input_pipeline.build_dataset(shards, per_replica * strategy.num_replicas_in_sync, training=True)
    assert ds.element_spec[0].shape[0] == 6
    inputs, _ = next(iter(strategy.experimental_distribute_dataset(ds)))
    assert [t.shape[0] for t in strategy.experimental_local_results(inputs)] == [3, 3]


def test_eval_dataset_is_ordered_and_repeats_full_batches(shards_dir):
    shards = input_pipeline.find_shards(_pattern(shards_dir, "validation"))
    ds = input_pipeline.build_dataset(shards, 3, training=False)
    first = [x.numpy() for x, _ in ds.take(3)]
    again = [x.numpy() for x, _ in ds.take(3)]
    assert all(b.shape[0] == 3 for b in first)
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))


def test_pattern_matching_nothing_names_the_pattern(tmp_path):
    with pytest.raises(DataError, match=f"no files match {tmp_path}/train-\\*"):
        input_pipeline.find_shards(f"{tmp_path}/train-*")


def test_missing_shard_and_missing_manifest_are_errors(shards_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards_dir, copy)
    os.remove(copy / "train-00001-of-00003.tfrecord")
    with pytest.raises(DataError, match="incomplete dataset, 1 shard"):
        input_pipeline.find_shards(_pattern(copy, "train"))
    os.remove(copy / "validation.manifest.json")
    with pytest.raises(DataError, match="no manifest"):
        input_pipeline.find_shards(_pattern(copy, "validation"))


def test_corrupt_record_is_traced_to_its_shard(shards_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards_dir, copy)
    victim = copy / "train-00002-of-00003.tfrecord"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    shards = input_pipeline.find_shards(_pattern(copy, "train"))
    ds = input_pipeline.build_dataset(shards, 4, training=False)
    with pytest.raises((tf.errors.DataLossError, tf.errors.InvalidArgumentError)):
        for _ in ds.take(10):
            pass
    assert input_pipeline.find_corrupt_record(shards).startswith(f"{victim} (record ")


@pytest.mark.parametrize(
    "error,expected",
    [
        (
            tf.errors.AbortedError(None, None, "All 10 retry attempts failed. The last failure: HTTP 503"),
            TransientError,
        ),
        (tf.errors.UnavailableError(None, None, "Error executing an HTTP request: HTTP 502"), TransientError),
        (tf.errors.PermissionDeniedError(None, None, "Error executing an HTTP request: HTTP 403"), DataError),
        (tf.errors.NotFoundError(None, None, "bucket does not exist"), DataError),
    ],
)
def test_listing_errors_transient_or_permanent(monkeypatch, error, expected):
    """Storage that stays unavailable after TF's retries may recover (145); a denied or missing bucket
    won't (3)."""

    def glob(pattern):
        raise error

    monkeypatch.setattr(tf.io.gfile, "glob", glob)
    with pytest.raises(expected, match=r"^gs://b/train-\*: ") as raised:
        input_pipeline.find_shards("gs://b/train-*")
    assert "\n" not in str(raised.value)


@pytest.fixture(scope="module")
def large_shards(tmp_path_factory):
    """The same kind of photos as `shards_dir`, stored at 240x240 (`prepare --image_size=240`)."""
    from tests.conftest import write_photos
    from trainer.data.prepare import prepare
    from trainer.data.prepare_config import PrepareConfig

    root = tmp_path_factory.mktemp("large")
    write_photos(root / "photos", 6)
    prepare(PrepareConfig(str(root / "photos"), str(root / "small"), num_shards=1, progress=False))
    manifests = prepare(
        PrepareConfig(str(root / "photos"), str(root / "large"), num_shards=2, progress=False, image_size=240)
    )
    assert manifests["train"].image_size == 240
    return str(root / "small"), str(root / "large")


def test_larger_stored_pairs_are_resized_whole_for_evaluation(large_shards):
    small, large = (input_pipeline.find_shards(_pattern(d, "train")) for d in large_shards)
    assert (small.image_size, large.image_size) == (120, 240)
    ds = input_pipeline.build_dataset(large, 6, training=False)
    assert ds.element_spec[1].shape.as_list() == [6, 120, 120, 3]
    by_size = {}
    for shards, (gray, color) in (
        (small, next(iter(input_pipeline.build_dataset(small, 6, False)))),
        (large, next(iter(ds))),
    ):
        by_size[shards.image_size] = {int(g.numpy().sum()): c.numpy() for g, c in zip(gray, color)}
    # Each photo squashed to 240 and resized whole is the photo squashed to 120, up to rounding.
    for small_color, large_color in zip(sorted(by_size[120].items()), sorted(by_size[240].items())):
        assert np.abs(small_color[1].astype(int) - large_color[1].astype(int)).mean() < 3


def test_training_on_larger_stored_pairs_takes_random_crops_at_several_scales(large_shards):
    large = input_pipeline.find_shards(_pattern(large_shards[1], "train"))
    record = next(iter(tf.data.TFRecordDataset(large.files[0])))
    gray, color = large_tensors = input_pipeline.parse_record(record, large.encoding, 240)
    assert gray.shape == (240, 240, 1) and color.shape == (240, 240, 3)
    tf.random.set_seed(3)
    crops = [input_pipeline.random_crop_pair(*large_tensors) for _ in range(8)]
    assert all(
        g.shape == (120, 120, 1) and c.shape == (120, 120, 3) and c.dtype == tf.uint8 for g, c in crops
    )
    assert len({c.numpy().tobytes() for _, c in crops}) == 8  # each crop differs
    # A crop keeps gray and colour aligned: the gray is the colour's luma, as prepare made it.
    g, c = (t.numpy().astype(float) for t in crops[0])
    luma = c @ [0.299, 0.587, 0.114]
    assert np.abs(luma - g[..., 0]).mean() < 2
    # With the smallest share 1 the crop is the whole image, as evaluation sees it.
    whole = input_pipeline.random_crop_pair(gray, color, smallest=1.0)[1].numpy()
    np.testing.assert_array_equal(whole, input_pipeline.parse_for_model(record, large)[1].numpy())
    ds = input_pipeline.build_dataset(large, 4, training=True, seed=0)
    assert ds.element_spec[0].shape.as_list() == [4, 120, 120, 1]
