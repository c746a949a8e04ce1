"""trainer.data.outputs: output locations are proven writable before any work."""

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
