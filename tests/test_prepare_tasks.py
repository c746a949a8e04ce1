"""Many prepare tasks writing one split (trainer/data/prepare_tasks.py, prepare_finalize.py), locally.

The same tasks against Cloud Storage, as separate processes with an Indexed Job's environment and a
SIGKILLed task, are in tests/test_prepare_gcs.py.
"""

import json
import os
import sys
import threading

import pytest
import tensorflow as tf

from tests import forkserver
from tests.conftest import write_photos
from trainer.data import prepare_finalize, prepare_tasks, schema
from trainer.data.input_pipeline import find_shards, parse_record
from trainer.data.prepare import prepare
from trainer.data.prepare_config import PrepareConfig
from trainer.errors import ConfigError


def ids(paths):
    return [
        tf.io.parse_single_example(r, schema.FEATURES)["id"].numpy().decode()
        for p in paths
        for r in tf.data.TFRecordDataset(p)
    ]


def run_tasks(photos, out, num_tasks=3, order=None, **flags):
    """Runs every task in turn (in `order`); returns what each returned."""
    flags = {"num_shards": 6, "holdout_fraction": 0.25, "run_name": "r1", "progress": False, **flags}
    return [
        prepare(PrepareConfig(str(photos), str(out), num_tasks=num_tasks, task_index=i, **flags))
        for i in (order or range(num_tasks))
    ]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, 30)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_three_tasks_write_one_split_each_photo_exactly_once(photos, tmp_path):
    out = tmp_path / "out"
    results = run_tasks(photos, out, order=[2, 0, 1])
    assert results[0] == {} and results[1] == {}, "only the last task to finish writes the manifests"
    manifests = results[2]
    train, validation = find_shards(f"{out}/train-*"), find_shards(f"{out}/validation-*")
    assert len(train.files) == 6 and len(validation.files) == 3  # validation: at least one shard per task
    seen = ids(train.files) + ids(validation.files)
    assert sorted(seen) == [f"photo{i:03d}.png" for i in range(30)]
    assert train.num_examples + validation.num_examples == 30
    assert [s.split(" ")[0] for s in manifests["train"].skipped + manifests["validation"].skipped] == [
        "broken.jpg"
    ]
    written = json.loads((out / "train.manifest.json").read_text())
    assert written["run"] == manifests["train"].run and written["skipped"][0].startswith("broken.jpg")
    parts = [json.loads((out / f"train.part-0000{i}-of-00003.json").read_text()) for i in range(3)]
    assert sum(p["photos"] for p in parts) == 31 and sum(p["ignored"] for p in parts) == 1
    for task, part in enumerate(parts):  # each task wrote only its own range of shard indices
        assert part["state"] == "done" and set(part["splits"]["train"]["shards"]) == {
            schema.shard_name("train", i, 6) for i in prepare_tasks.shard_range(task, 3, 6)
        }


def test_the_split_matches_a_single_prepare(photos, tmp_path):
    run_tasks(photos, tmp_path / "tasks", num_tasks=2, encoding="raw")
    prepare(
        PrepareConfig(
            str(photos),
            str(tmp_path / "one"),
            num_shards=3,
            holdout_fraction=0.25,
            encoding="raw",
            progress=False,
        )
    )
    for split in ("train", "validation"):
        tasks, one = (sorted(ids(find_shards(f"{tmp_path / d}/{split}-*").files)) for d in ("tasks", "one"))
        assert tasks == one


def test_a_restarted_task_redoes_only_its_part_and_a_finished_run_is_complete(photos, tmp_path, capsys):
    out = tmp_path / "out"
    run_tasks(photos, out, order=[0, 2])
    mine = out / "train.part-00001-of-00003.json"
    assert not mine.exists() and not (out / "train.manifest.json").exists()
    # task 1 was killed after its claim and one shard: the leftover must be replaced, not counted
    mine.write_text(
        json.dumps(
            {
                "run": prepare_tasks.Plan.make(
                    str(out), 3, 1, "r1", "train", "validation", 6, False, _config(photos)
                ).run,
                "state": "writing",
            }
        )
    )
    (out / "train-00002-of-00006.tfrecord").write_bytes(b"half a shard")
    capsys.readouterr()
    manifests = run_tasks(photos, out, order=[1])[0]
    assert sorted(
        ids(find_shards(f"{out}/train-*").files) + ids(find_shards(f"{out}/validation-*").files)
    ) == [f"photo{i:03d}.png" for i in range(30)]
    assert manifests["train"].num_examples + manifests["validation"].num_examples == 30
    assert "task 1/3 wrote the manifests" in capsys.readouterr().err
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run_tasks(photos, out, order=[0, 1, 2]) == [{}, {}, {}]
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert "already complete" in capsys.readouterr().err


def _config(photos):
    return {
        "input_dir": str(photos),
        "gray_dir": None,
        "recursive": False,
        "holdout_fraction": 0.25,
        "encoding": "png",
        "seed": 0,
    }


def test_another_run_is_refused_unless_overwrite_which_replaces_the_split(photos, tmp_path):
    out = tmp_path / "out"
    run_tasks(photos, out)
    before = (out / "train.manifest.json").read_text()
    with pytest.raises(ConfigError, match="pass --overwrite to replace split 'train'"):
        prepare(
            PrepareConfig(
                str(photos),
                str(out),
                num_shards=6,
                holdout_fraction=0.25,
                num_tasks=3,
                task_index=0,
                run_name="r2",
                progress=False,
            )
        )
    with pytest.raises(ConfigError, match="--overwrite"):
        prepare(PrepareConfig(str(photos), str(out), num_shards=6, holdout_fraction=0.25, progress=False))
    assert (out / "train.manifest.json").read_text() == before
    run_tasks(photos, out, num_tasks=2, num_shards=4, run_name="r2", overwrite=True)
    assert sorted(n for n in os.listdir(out) if n.startswith("train")) == [
        "train-00000-of-00004.tfrecord",
        "train-00001-of-00004.tfrecord",
        "train-00002-of-00004.tfrecord",
        "train-00003-of-00004.tfrecord",
        "train.manifest.json",
        "train.part-00000-of-00002.json",
        "train.part-00001-of-00002.json",
    ]
    assert json.loads((out / "train.manifest.json").read_text())["run"].startswith("r2-")


def test_two_tasks_finishing_together_write_one_manifest(photos, tmp_path, capsys):
    out = str(tmp_path / "out")
    os.makedirs(out)
    plans = [
        prepare_tasks.Plan.make(out, 2, i, "r1", "train", None, 2, False, _config(photos)) for i in range(2)
    ]
    for plan in plans:
        plan.write_part(
            {
                "state": "done",
                "photos": 1,
                "bytes_read": 1,
                "bytes_written": 1,
                "ignored": 0,
                "seconds": 1,
                "splits": {"train": {"shards": {schema.shard_name("train", plan.task, 2): 1}, "skipped": []}},
            }
        )
    results, barrier = [], threading.Barrier(2)

    def finish(plan):
        barrier.wait()
        results.append(prepare_finalize.finalize(plan, "png", sys.stderr))

    threads = [threading.Thread(target=finish, args=(p,)) for p in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r["train"].num_examples == 2 for r in results)
    assert schema.read_manifest(out, "train").run == plans[0].run


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_tasks": 3, "task_index": 3}, "need 0 <= task_index < num_tasks"),
        ({"num_tasks": 0, "task_index": 0}, "need 0 <= task_index < num_tasks"),
        ({"num_tasks": 8, "task_index": 0, "num_shards": 4}, "fewer than --num_tasks=8"),
        ({"num_tasks": 2, "task_index": 0, "output_dir": "s3://b/data"}, "local folder or gs:// only"),
    ],
)
def test_bad_task_flags(photos, tmp_path, kwargs, message):
    kwargs = {"output_dir": str(tmp_path / "out"), "progress": False, **kwargs}
    with pytest.raises(ConfigError, match=message):
        prepare(PrepareConfig(str(photos), **kwargs))


@pytest.mark.system
def test_cli_takes_the_task_from_an_indexed_job_environment_and_logs_progress(photos, tmp_path):
    env = {
        **forkserver.ENV,
        "JOB_COMPLETION_INDEX": "0",
        "COLORIZER_NUM_TASKS": "1",
        "COLORIZER_RUN_NAME": "job-a",
    }
    flags = [f"--input_dir={photos}", f"--output_dir={tmp_path}/out", "--num_shards=2", "--workers=2"]
    proc = forkserver.run("trainer.prepare", flags, env)
    assert proc.returncode == 0, proc.stderr
    assert "task 0/1: first photo decoded" in proc.stderr
    assert "task 0/1: 31/31 photos (1 skipped)" in proc.stderr and "photos/s" in proc.stderr
    assert "task 0/1 wrote the manifests; all 1 tasks: 31 photos, 1 skipped" in proc.stderr
    assert schema.read_manifest(str(tmp_path / "out"), "train").run.startswith("job-a-")
    flags = [f"--input_dir={photos}", f"--output_dir={tmp_path}/out2"]
    bad = forkserver.run("trainer.prepare", flags, {**env, "COLORIZER_NUM_TASKS": "three"})
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: $COLORIZER_NUM_TASKS"
    )


def test_recursive_reads_subfolders_named_by_their_path(tmp_path):
    write_photos(tmp_path / "in", 2)
    write_photos(tmp_path / "in" / "cats" / "young", 2, start=10)
    flat = prepare(PrepareConfig(str(tmp_path / "in"), str(tmp_path / "flat"), num_shards=1, progress=False))
    assert flat["train"].num_examples == 2
    nested = prepare(
        PrepareConfig(
            str(tmp_path / "in"), str(tmp_path / "all"), num_shards=1, recursive=True, progress=False
        )
    )
    assert sorted(ids(find_shards(f"{tmp_path}/all/train-*").files)) == [
        "cats/young/photo010.png",
        "cats/young/photo011.png",
        "photo000.png",
        "photo001.png",
    ]
    assert nested["train"].num_examples == 4


def test_tasks_store_larger_pairs_as_a_run_of_its_own(photos, tmp_path):
    out = tmp_path / "out"
    manifests = run_tasks(photos, out, image_size=240)[-1]
    assert manifests["train"].image_size == manifests["validation"].image_size == 240
    train = find_shards(f"{out}/train-*")
    gray, color = parse_record(next(iter(tf.data.TFRecordDataset(train.files[0]))), train.encoding, 240)
    assert gray.shape == (240, 240, 1) and color.shape == (240, 240, 3)
    # Another size is another run: its shards are not taken for the 120x120 run's.
    with pytest.raises(ConfigError, match="not from run r1-.*pass --overwrite"):
        run_tasks(photos, out, order=[0])
