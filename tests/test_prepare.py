import json
import os

import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image

from tests import forkserver
from tests.conftest import make_photo, write_photos
from trainer.data import gcs, schema
from trainer.data.prepare import assign_split, prepare
from trainer.data.prepare_config import PrepareConfig
from trainer.errors import ConfigError, DataError, TransientError


def _records(path):
    return [tf.io.parse_single_example(r, schema.FEATURES) for r in tf.data.TFRecordDataset(path)]


def test_writes_shards_and_manifest_and_names_skipped_files(tmp_path):
    write_photos(tmp_path / "in", 7)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "in" / "notes.txt").write_text("hi")
    out = str(tmp_path / "out")
    manifests = prepare(PrepareConfig(str(tmp_path / "in"), out, split="train", num_shards=3, progress=False))
    manifest = manifests["train"]
    assert manifest.num_examples == 7 and len(manifest.shards) == 3
    assert [s.split(" ")[0] for s in manifest.skipped] == ["broken.jpg"]
    assert sorted(os.listdir(out)) == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)] + [
        "train.manifest.json"
    ]
    on_disk = json.loads((tmp_path / "out" / "train.manifest.json").read_text())
    assert on_disk["num_examples"] == 7 and on_disk["skipped"][0].startswith("broken.jpg")
    ids = sorted(r["id"].numpy().decode() for f in manifest.shards for r in _records(os.path.join(out, f)))
    assert ids == [f"photo{i:03d}.png" for i in range(7)]
    for name, count in manifest.shards.items():
        assert len(_records(os.path.join(out, name))) == count


def test_gray_taken_from_parallel_folder(tmp_path):
    write_photos(tmp_path / "color", 2)
    os.makedirs(tmp_path / "gray")
    for name in os.listdir(tmp_path / "color"):
        Image.new("L", (64, 48), 77).save(tmp_path / "gray" / name)
    out = str(tmp_path / "out")
    prepare(
        PrepareConfig(
            str(tmp_path / "color"), out, num_shards=1, gray_dir=str(tmp_path / "gray"), progress=False
        )
    )
    record = _records(os.path.join(out, "train-00000-of-00001.tfrecord"))[0]
    gray, _ = schema.decode_pair(record["gray"], record["color"], "png")
    assert np.all(gray.numpy() == 77)


def test_refuses_to_overwrite_and_overwrite_removes_stale_shards(tmp_path):
    write_photos(tmp_path / "in", 4)
    out = str(tmp_path / "out")
    prepare(PrepareConfig(str(tmp_path / "in"), out, num_shards=4, progress=False))
    before = (tmp_path / "out" / "train-00000-of-00004.tfrecord").read_bytes()
    with pytest.raises(ConfigError, match="--overwrite"):
        prepare(PrepareConfig(str(tmp_path / "in"), out, num_shards=2, progress=False))
    assert (tmp_path / "out" / "train-00000-of-00004.tfrecord").read_bytes() == before
    prepare(PrepareConfig(str(tmp_path / "in"), out, num_shards=2, overwrite=True, progress=False))
    assert sorted(os.listdir(out)) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "train.manifest.json",
    ]


def test_split_named_like_the_default_holdout_gets_its_shards(tmp_path):
    write_photos(tmp_path / "in", 6)
    manifests = prepare(
        PrepareConfig(
            str(tmp_path / "in"), str(tmp_path / "out"), split="validation", num_shards=3, progress=False
        )
    )
    assert len(manifests["validation"].shards) == 3


def test_holdout_split_is_stable_by_name(tmp_path):
    write_photos(tmp_path / "in", 20)
    manifests = prepare(
        PrepareConfig(
            str(tmp_path / "in"), str(tmp_path / "out"), num_shards=2, holdout_fraction=0.3, progress=False
        )
    )
    expected = sum(
        assign_split(f"photo{i:03d}.png", "train", "validation", 0.3) == "validation" for i in range(20)
    )
    assert manifests["validation"].num_examples == expected
    assert manifests["train"].num_examples == 20 - expected


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        prepare(PrepareConfig(str(tmp_path / "missing"), str(tmp_path / "out"), progress=False))
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        prepare(PrepareConfig(str(tmp_path / "only_text"), str(tmp_path / "out"), progress=False))
    (tmp_path / "all_bad").mkdir()
    (tmp_path / "all_bad" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="none of 1"):
        prepare(PrepareConfig(str(tmp_path / "all_bad"), str(tmp_path / "out"), progress=False))


@pytest.mark.system
def test_cli_missing_folder_is_one_line_and_exit_2(tmp_path):
    proc = forkserver.run(
        "trainer.prepare",
        [
            f"--input_dir={tmp_path}/nope",
            f"--output_dir={tmp_path}/out",
        ],
        forkserver.ENV,
    )
    assert proc.returncode == 2
    assert f"error: --input_dir={tmp_path}/nope: no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.system
def test_cli_writes_shards_with_parallel_workers(tmp_path):
    write_photos(tmp_path / "in", 6, fmt="jpg")
    Image.fromarray(make_photo(9)).save(tmp_path / "in" / "big.bmp")
    proc = forkserver.run(
        "trainer.prepare",
        [
            f"--input_dir={tmp_path}/in",
            f"--output_dir={tmp_path}/out",
            "--num_shards=2",
            "--workers=2",
            "--encoding=raw",
        ],
        forkserver.ENV,
    )
    assert proc.returncode == 0, proc.stderr
    assert "train: 7 examples in 2 shards (raw)" in proc.stdout
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")]


@pytest.mark.system
def test_cli_unwritable_output_is_one_line_before_any_photo_is_decoded(tmp_path, monkeypatch):
    write_photos(tmp_path / "in", 2)
    (tmp_path / "file").write_text("not a folder")
    proc = forkserver.run(
        "trainer.prepare",
        [
            f"--input_dir={tmp_path}/in",
            f"--output_dir={tmp_path}/file/out",
        ],
        forkserver.ENV,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: --output_dir={tmp_path}/file/out: not writable (")
    )
    from trainer.data import prepare as module

    monkeypatch.setattr(module, "_load", lambda job: pytest.fail("a photo was decoded"))
    with pytest.raises(ConfigError):
        prepare(PrepareConfig(str(tmp_path / "in"), str(tmp_path / "file" / "out"), progress=False))


def test_decompression_bomb_is_skipped_and_named(tmp_path):
    from tests.hostile_requests import png_bomb

    write_photos(tmp_path / "in", 3)
    (tmp_path / "in" / "bomb.png").write_bytes(png_bomb(15000, 12000))
    manifests = prepare(
        PrepareConfig(str(tmp_path / "in"), str(tmp_path / "out"), num_shards=1, progress=False)
    )
    assert manifests["train"].num_examples == 3
    [skipped] = manifests["train"].skipped
    assert skipped.startswith("bomb.png (ValueError: ") and "decompression bomb" in skipped
    written = json.loads((tmp_path / "out" / "train.manifest.json").read_text())
    assert written["skipped"] == [skipped]


class _FailingClient:
    """A google-cloud-storage client whose every call raises `error` (its retries already spent)."""

    def __init__(self, error):
        self.error = error

    def list_blobs(self, *args, **kwargs):
        raise self.error

    def bucket(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize(
    "make_error,expected",
    [
        (lambda e: e.ServiceUnavailable("503 Backend Error"), TransientError),
        (lambda e: e.TooManyRequests("429 rate limit"), TransientError),
        (lambda e: e.InternalServerError("500 internal"), TransientError),
        (lambda e: e.GatewayTimeout("504"), TransientError),
        (lambda e: requests.exceptions.ConnectionError("connection reset"), TransientError),
        (lambda e: e.Forbidden("403 denied"), ConfigError),
        (lambda e: e.NotFound("404 no bucket"), DataError),
    ],
)
def test_cloud_storage_errors_are_transient_or_permanent(tmp_path, monkeypatch, make_error, expected):
    from google.api_core import exceptions

    monkeypatch.setattr(gcs, "_client", lambda: _FailingClient(make_error(exceptions)))
    write_photos(tmp_path / "in", 2)
    with pytest.raises(expected, match="^gs://bucket/data: ") as raised:
        prepare(PrepareConfig(str(tmp_path / "in"), "gs://bucket/data", num_shards=1, progress=False))
    assert "\n" not in str(raised.value)


def _link(path, target):
    """A symlink at `path` to `target` (relative to the link's folder, as `ln -s` takes it)."""
    os.symlink(target, path)


def _listing(folder, recursive=True):
    from trainer.data.photo_source import PhotoSource

    source = PhotoSource(str(folder), recursive)
    return [name for name, _ in source], source.subfolders


def test_recursive_listing_survives_symlink_loops(tmp_path):
    write_photos(tmp_path / "in", 1)
    write_photos(tmp_path / "in" / "a" / "b", 1, start=20)
    _link(tmp_path / "in" / "a" / "loop", "..")  # the input folder
    _link(tmp_path / "in" / "a" / "b" / "up", "..")  # the link's own parent
    _link(tmp_path / "in" / "a" / "far", "../..")  # above the input folder
    _link(tmp_path / "in" / "a" / "self", "self")  # can't be resolved (ELOOP)
    expected = ["photo000.png", "a/b/photo020.png"]
    assert _listing(tmp_path / "in") == _listing(tmp_path / "in") == (expected, 0)
    assert _listing(tmp_path / "in", recursive=False) == (["photo000.png"], 1)


def test_recursive_listing_names_each_real_file_once(tmp_path):
    """Two links to one folder or file list it once, under the first name the sorted walk meets."""
    write_photos(tmp_path / "in", 2)
    write_photos(tmp_path / "in" / "a" / "b", 1, start=20)
    write_photos(tmp_path / "elsewhere", 2, start=100)
    write_photos(tmp_path / "lone", 1, start=200)
    _link(tmp_path / "in" / "0link", "a/b")  # walked before a/b, which is then left out
    _link(tmp_path / "in" / "copy", "a/b")
    _link(tmp_path / "in" / "ext1", "../elsewhere")
    _link(tmp_path / "in" / "ext2", "../elsewhere")
    _link(tmp_path / "in" / "also.png", "photo000.png")  # its folder lists the file itself
    _link(tmp_path / "in" / "z1.png", "../lone/photo200.png")
    _link(tmp_path / "in" / "z2.png", "../lone/photo200.png")
    _link(tmp_path / "in" / "zz", "../lone")  # photo200.png was listed as z1.png
    expected = [
        "photo000.png",
        "photo001.png",
        "z1.png",
        "0link/photo020.png",
        "ext1/photo100.png",
        "ext1/photo101.png",
    ]
    assert _listing(tmp_path / "in") == _listing(tmp_path / "in") == (expected, 0)
    assert _listing(tmp_path / "in", recursive=False) == (["photo000.png", "photo001.png", "z1.png"], 6)
    manifests = prepare(
        PrepareConfig(
            str(tmp_path / "in"), str(tmp_path / "out"), num_shards=1, recursive=True, progress=False
        )
    )
    assert manifests["train"].num_examples == len(expected) and not manifests["train"].skipped
    [shard] = manifests["train"].shards
    assert sorted(r["id"].numpy().decode() for r in _records(str(tmp_path / "out" / shard))) == sorted(
        expected
    )


def test_a_photo_file_above_the_size_limit_is_skipped_and_named_unread(tmp_path, monkeypatch, capsys):
    from trainer.data import photo_source

    monkeypatch.setattr(photo_source, "MAX_PHOTO_BYTES", 20_000)
    write_photos(tmp_path / "in", 2)
    # Not an image at all: read, it would be skipped as unreadable; refused by size, it never is.
    (tmp_path / "in" / "big.png").write_bytes(b"\0" * 30_000)
    manifests = prepare(
        PrepareConfig(str(tmp_path / "in"), str(tmp_path / "out"), num_shards=1, progress=False)
    )
    reason = "30000 bytes, above the 20000 bytes limit for one photo file"
    assert manifests["train"].num_examples == 2
    assert manifests["train"].skipped == (f"big.png (TooLarge: {reason})",)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "big.png" in line]
    assert warnings == [f"warning: skipping big.png without reading it: {reason}"]


class _Page(list):
    prefixes: tuple = ()


class _ListingClient:
    """Lists (name, size) objects as google-cloud-storage does; any read fails the test."""

    def __init__(self, objects):
        self.objects = objects

    def list_blobs(self, bucket, prefix, **kwargs):
        page = _Page(type("Blob", (), {"name": prefix + name, "size": size})() for name, size in self.objects)
        return type("Blobs", (), {"pages": [page]})()

    def bucket(self, *args, **kwargs):
        pytest.fail("an object was read")


def test_a_gcs_object_above_the_size_limit_is_refused_from_its_listing(monkeypatch):
    """The object's size comes from the listing: its decode job fails with TooLarge, nothing downloaded."""
    import io

    from trainer.data import photo_source
    from trainer.data.prepare import _load
    from trainer.data.prepare_stream import Scan

    client = _ListingClient([("a.jpg", 10), ("huge.jpg", 65 * 2**20), ("z.jpg", 64 * 2**20)])
    monkeypatch.setattr(gcs, "_client", lambda: client)
    log = io.StringIO()
    scan = Scan(photo_source.PhotoSource("gs://bucket/photos"), log=log)
    assert list(scan) == ["a.jpg", "huge.jpg", "z.jpg"] and list(scan.refused) == ["huge.jpg"]
    assert scan.bytes == 10 + 64 * 2**20  # what will be read
    reason = "65.0 MiB, above the 64.0 MiB limit for one photo file"
    assert log.getvalue() == f"warning: skipping huge.jpg without reading it: {reason}\n"
    job = ("huge.jpg", scan.refused["huge.jpg"], "gs://bucket/gray/huge.jpg", ("png", 120))
    [fetched] = photo_source.fetch([job])
    assert _load(fetched) == ("huge.jpg", None, f"TooLarge: {reason}")
