"""Prepare tasks as an Indexed Job runs them, against a real GCS server (fake-gcs-server, gcs_emulator.py).

Photos in gs://BUCKET/photos/ -> 3 `python -m trainer.prepare` processes with JOB_COMPLETION_INDEX,
COLORIZER_NUM_TASKS and COLORIZER_RUN_NAME set -> shards and one manifest per split in the bucket ->
`python -m trainer.task` trains from them. A SIGKILLed task is restarted and the split ends complete.
Set COLORIZER_REQUIRE_GCS_TESTS=1 (CI does) to fail instead of skipping where the emulator can't start.
"""

import json
import os
import signal
import time

import pytest
import tensorflow as tf

from tests import forkserver
from tests.conftest import REPO
from tests.forkserver import ENV
from tests.gcs_emulator import module_fixture
from tests.test_prepare_tasks import ids
from trainer.data import photo_source, schema

pytestmark = pytest.mark.system  # real processes, servers or a second TensorFlow (README: test tiers)

BUCKET = "prepare-tasks"
FLAGS = ["--num_shards=6", "--holdout_fraction=0.2", "--workers=1"]
# Reads both splits of a prepared prefix through the trainer's own input pipeline, over TF's GCS
# file system: the pairs the trainer would train and score on, counted.
_READ_SPLITS = """
import sys
from trainer.data import input_pipeline
for split in ("train", "validation"):
    shards = input_pipeline.find_shards(f"{sys.argv[1]}/{split}-*")
    pairs = sum(int(gray.shape[0]) for gray, _ in input_pipeline.pair_batches(shards, 8))
    assert pairs == shards.num_examples, (split, pairs, shards.num_examples)
    print(split, pairs)
"""


emulator = module_fixture(BUCKET)


@pytest.fixture(scope="module")
def photos(emulator):
    """The bundled sample's 80 real photos as JPEGs in photos/, 3 large ones, a truncated JPEG, a text file
    and a subfolder."""
    bucket, names = emulator.client().bucket(BUCKET), []
    for shard in sorted(tf.io.gfile.glob(os.path.join(REPO, "trainer", "sample", "*.tfrecord"))):
        for record in tf.data.TFRecordDataset(shard):
            example = tf.io.parse_single_example(record, schema.FEATURES)
            name = os.path.splitext(example["id"].numpy().decode())[0] + ".jpg"
            jpeg = tf.io.encode_jpeg(tf.io.decode_png(example["color"])).numpy()
            bucket.blob(f"photos/{name}").upload_from_string(jpeg)
            names.append(name)
    # 12-MP photos late in task 1's share keep it busy for a while after its first photo (test below)
    large = tf.io.encode_jpeg(
        tf.cast(tf.random.stateless_uniform([3000, 4000, 3], [1, 2], maxval=256, dtype=tf.int32), tf.uint8),
        quality=90,
    ).numpy()
    slow = [n for n in (f"zz-large-{k:02d}.jpg" for k in range(30)) if photo_source.task_of(n, 3) == 1][:3]
    for name in slow:
        bucket.blob(f"photos/{name}").upload_from_string(large)
    names += slow
    bucket.blob("photos/zz-truncated.jpg").upload_from_string(jpeg[: len(jpeg) // 3])
    bucket.blob("photos/README.txt").upload_from_string(b"not a photo")
    bucket.blob("photos/old/elsewhere.jpg").upload_from_string(jpeg)  # not read without --recursive
    return sorted(names)


def task(emu, index, output, scratch, run="prep-a"):
    """One task of the Indexed Job, as a process group of its own (a pod's container); its temporary
    files go in `scratch` (a killed task's staged shards would otherwise stay in /tmp)."""
    env = {
        **ENV,
        **emu.env,
        "TMPDIR": str(scratch),
        "JOB_COMPLETION_INDEX": str(index),
        "COLORIZER_NUM_TASKS": "3",
        "COLORIZER_RUN_NAME": run,
    }
    flags = [f"--input_dir=gs://{BUCKET}/photos/", f"--output_dir=gs://{BUCKET}/{output}", *FLAGS]
    log = scratch / f"{output}-task{index}-{len(list(scratch.glob('*.log')))}.log"
    with open(log, "w") as stderr:
        proc = forkserver.start(
            "trainer.prepare",
            flags,
            env,
            stdout=stderr,
            stderr=stderr,
            wrap=emu.wrap,
            new_session=True,
        )
    proc.log = log
    return proc


def wait_for(proc, text, timeout=120):
    """Waits until the task's log holds `text`; fails if it ends first."""
    deadline = time.monotonic() + timeout
    while text not in proc.log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.log.read_text()
        time.sleep(0.05)


def finish(proc, timeout=300):
    code = proc.wait(timeout=timeout)
    assert code == 0, proc.log.read_text()
    return proc.log.read_text()


def objects(emu, prefix):
    return sorted(b.name for b in emu.client().list_blobs(BUCKET, prefix=prefix))


def records(emu, prefix, tmp_path):
    """ids of every record in the split's shards (downloaded), and its manifest."""
    local = tmp_path / prefix.replace("/", "_")
    local.mkdir()
    for blob in emu.client().list_blobs(BUCKET, prefix=prefix + "-"):
        blob.download_to_filename(local / blob.name.rsplit("/", 1)[1])
    manifest = json.loads(emu.client().bucket(BUCKET).blob(prefix + ".manifest.json").download_as_bytes())
    return ids(sorted(str(p) for p in local.iterdir())), manifest


def test_three_tasks_prepare_a_bucket_and_the_trainer_reads_every_pair(emulator, photos, tmp_path):
    started = time.monotonic()
    procs = [task(emulator, i, "data", tmp_path) for i in range(3)]
    wait_for(procs[0], "first photo decoded")
    assert time.monotonic() - started < 30, "the first photo must be decoded within 30 s of start"
    logs = [finish(p) for p in procs]
    assert not emulator.unknown
    # Tasks finishing together race for the manifests: each is created once (if-generation-match=0).
    assert any("wrote the manifests" in log for log in logs), logs
    done = [("wrote the manifests" in log or "found the manifests" in log) for log in logs]
    assert all(d != ("waiting for task(s)" in log) for d, log in zip(done, logs)), logs
    assert objects(emulator, "data/") == sorted(
        [f"data/train-0000{i}-of-00006.tfrecord" for i in range(6)]
        + ["data/train.manifest.json"]
        + [f"data/train.part-0000{i}-of-00003.json" for i in range(3)]
        + [f"data/validation-0000{i}-of-00003.tfrecord" for i in range(3)]
        + ["data/validation.manifest.json"]
    )
    train, train_manifest = records(emulator, "data/train", tmp_path)
    validation, validation_manifest = records(emulator, "data/validation", tmp_path)
    assert sorted(train + validation) == photos, "every photo exactly once"
    assert train_manifest["num_examples"] == len(train) and validation_manifest["num_examples"] == len(
        validation
    )
    assert [s.split(" ")[0] for s in train_manifest["skipped"] + validation_manifest["skipped"]] == [
        "zz-truncated.jpg"
    ]
    # As the trainer reads them: find_shards checks the manifests, then every pair.
    read = forkserver.run(
        None, ["-c", _READ_SPLITS, f"gs://{BUCKET}/data"], {**ENV, **emulator.env}, wrap=emulator.wrap
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == ["train", str(len(train)), "validation", str(len(validation))]


def test_a_killed_task_is_restarted_and_the_split_ends_complete_once(emulator, photos, tmp_path):
    killed = task(emulator, 1, "killed", tmp_path)
    wait_for(killed, "first photo decoded")
    os.killpg(killed.pid, signal.SIGKILL)  # mid-run: decoding, nothing of its own uploaded yet
    killed.wait(timeout=60)
    part = json.loads(
        emulator.client().bucket(BUCKET).blob("killed/train.part-00001-of-00003.json").download_as_bytes()
    )
    assert part["state"] == "writing"
    # As if the killed attempt had got one shard of its range uploaded: the restart must replace it.
    emulator.client().bucket(BUCKET).blob("killed/train-00002-of-00006.tfrecord").upload_from_string(
        b"partial"
    )
    others = [finish(task(emulator, i, "killed", tmp_path)) for i in (0, 2)]
    assert all("waiting for task(s) 1" in log for log in others), others
    assert not [o for o in objects(emulator, "killed/") if o.endswith(".manifest.json")], (
        "no manifest before the end"
    )
    restarted = finish(task(emulator, 1, "killed", tmp_path))
    assert "task 1/3 wrote the manifests" in restarted
    train, manifest = records(emulator, "killed/train", tmp_path)
    validation, _ = records(emulator, "killed/validation", tmp_path)
    assert sorted(train + validation) == photos and manifest["num_examples"] == len(train)
    again = finish(task(emulator, 1, "killed", tmp_path))
    assert "already complete" in again
