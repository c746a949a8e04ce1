"""`python -m trainer.launch serve-starter`: the packaged starter as version 1 of an export folder."""

import os

import pytest

from trainer.cluster import launch, starter_export


@pytest.fixture
def starter(tmp_path, monkeypatch):
    """A stand-in starter folder (the real one is checked in tests/test_starter.py)."""
    folder = tmp_path / "starter"
    (folder / "variables").mkdir(parents=True)
    for name in ("saved_model.pb", "fingerprint.pb", "colorizer.json", "variables/variables.index"):
        (folder / name).write_bytes(name.encode())
    monkeypatch.setattr(starter_export, "STARTER_DIR", str(folder))
    return folder


def test_a_local_export_folder_gets_version_1_once(starter, tmp_path, capsys):
    export_dir = tmp_path / "export"
    assert launch.main(["serve-starter", f"--export_dir={export_dir}"]) == 0
    assert sorted(os.listdir(export_dir)) == ["1"]  # no staging folder left
    assert (export_dir / "1" / "variables" / "variables.index").read_bytes() == b"variables/variables.index"
    assert "TF Serving loads it at its next poll" in capsys.readouterr().out
    assert launch.main(["serve-starter", f"--export_dir={export_dir}"]) == 2
    assert "1 exists: pass another --version or remove it" in capsys.readouterr().err


def test_on_gcs_every_file_is_uploaded_saved_model_pb_last_and_nothing_is_overwritten(starter, monkeypatch):
    uploads, existing = [], {}
    monkeypatch.setattr(starter_export.gcs, "list_generations", lambda directory, prefix: existing)
    monkeypatch.setattr(starter_export.gcs, "upload", lambda pairs, expected: uploads.extend(pairs))
    assert starter_export.place("gs://b/export/", 1) == "gs://b/export/1"
    assert [remote for _, remote in uploads][-1] == "gs://b/export/1/saved_model.pb" and len(uploads) == 4
    existing["gs://b/export/1/saved_model.pb"] = 7
    with pytest.raises(launch.UsageError, match="gs://b/export/1/ exists"):
        starter_export.place("gs://b/export", 1)


def test_without_the_starter_it_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(starter_export, "STARTER_DIR", str(tmp_path / "none"))
    assert launch.main(["serve-starter", f"--export_dir={tmp_path}/export"]) == 2
    assert "the starter model is not in this installation" in capsys.readouterr().err
