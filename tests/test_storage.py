"""trainer.data.storage: generation-guarded small files, and output locations proven writable first.

The gs:// side of the same calls runs against the GCS emulator in tests/test_prepare_gcs.py and
tests/test_gcs.py."""

import os

import pytest

from trainer.data import storage
from trainer.errors import ConfigError


def test_writable_locations_are_created_and_left_clean(tmp_path):
    storage.check_outputs(
        {"model_dir": str(tmp_path / "m"), "export_dir": str(tmp_path / "e" / "x")}, worker="3"
    )
    assert os.listdir(tmp_path / "m") == [] and os.listdir(tmp_path / "e" / "x") == []


def test_unwritable_location_names_the_flag_in_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError) as error:
        storage.check_outputs(
            {"model_dir": str(tmp_path / "m"), "export_dir": str(tmp_path / "file" / "export")}
        )
    message = str(error.value)
    assert message.startswith(f"--export_dir={tmp_path}/file/export: not writable (") and "\n" not in message


def test_local_writes_are_whole_and_guarded_by_generation(tmp_path):
    path = str(tmp_path / "train.manifest.json")
    assert storage.read_text(path) == (None, 0)
    assert storage.write_text(path, "first", 0) == 1  # create if absent
    assert storage.write_text(path, "second", 0) == 0  # someone wrote it first: not replaced
    assert storage.read_text(path) == ("first", 1)
    assert storage.write_text(path, "third", 1) == 1 and storage.read_text(path) == ("third", 1)
    (tmp_path / "out.png.partial").write_bytes(b"a killed writer's leftover")
    assert storage.write_bytes(str(tmp_path / "out.png"), b"png") == 1
    assert sorted(os.listdir(tmp_path)) == ["out.png", "train.manifest.json"]  # no temporary left


def test_listing_and_deleting_local_files(tmp_path):
    for name in ("train-00000-of-00001.tfrecord", "train.manifest.json", "validation.manifest.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "train-folder").mkdir()
    found = storage.list_generations(str(tmp_path), "train")
    assert found == {
        f"{tmp_path}/train-00000-of-00001.tfrecord": 1,
        f"{tmp_path}/train.manifest.json": 1,
    }
    storage.delete({**found, f"{tmp_path}/gone": 1})  # already gone is fine
    assert sorted(os.listdir(tmp_path)) == ["train-folder", "validation.manifest.json"]
    assert storage.list_generations(str(tmp_path / "missing"), "") == {}
