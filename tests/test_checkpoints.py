"""trainer.train.checkpoints: verified saves, fallback restores, and the run identity kept in model_dir."""

import glob
import os
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.errors import ConfigError, DataError, TransientError
from trainer.serve import export, preprocess
from trainer.train import checkpoints
from trainer.train.models import build_model


def _state(value=0.0):
    return tf.train.Checkpoint(
        weights=tf.Variable(tf.fill([1000], value)), step=tf.Variable(0, dtype=tf.int64)
    )


def _truncate_data(prefix):
    [data] = glob.glob(f"{prefix}.data-*")
    content = open(data, "rb").read()
    open(data, "wb").write(content[: len(content) // 2])


def test_keeps_the_newest_verified_checkpoints(tmp_path):
    saver = checkpoints.VerifiedCheckpoints(_state(), str(tmp_path), keep=2)
    for number in (10, 20, 30):
        saver.save(number)
    assert [os.path.basename(p) for p in checkpoints.listed(str(tmp_path))] == ["ckpt-20", "ckpt-30"]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-30")
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-20", "ckpt-30"]
    assert not glob.glob(f"{tmp_path}/checkpoint.*"), "the state file is renamed into place, no leftover"


def test_interval_skips_saves_that_come_too_soon(tmp_path):
    saver = checkpoints.VerifiedCheckpoints(_state(), str(tmp_path), keep=3, interval=10)
    assert saver.save(10, force=False) and saver.save(15, force=False) is None and saver.save(20, force=False)


def test_a_save_that_does_not_verify_is_retried_and_never_pushes_out_a_good_one(tmp_path, monkeypatch):
    saver = checkpoints.VerifiedCheckpoints(_state(), str(tmp_path), keep=1, retry_seconds=0)
    saver.save(1)
    calls = []

    def flaky(prefix):
        calls.append(prefix)
        if len(calls) < 3:
            raise tf.errors.DataLossError(None, None, "file is too short to be an sstable")

    monkeypatch.setattr(checkpoints, "_verify", flaky)
    assert saver.save(2).endswith("ckpt-2") and len(calls) == 3
    monkeypatch.setattr(checkpoints, "_verify", lambda prefix: _fail())
    with pytest.raises(
        TransientError, match=r"ckpt-3 failed 3 times .*a restart resumes from the last good one"
    ):
        saver.save(3)
    assert [os.path.basename(p) for p in checkpoints.listed(str(tmp_path))][0] == "ckpt-2"
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")


def _fail():
    raise IndexError("Read less bytes than requested")


def test_restore_falls_back_from_an_unreadable_newest_checkpoint(tmp_path, caplog):
    saver = checkpoints.VerifiedCheckpoints(_state(), str(tmp_path), keep=3)
    for number in (1, 2, 3):
        state = _state(float(number))
        saver.checkpoint = state
        saver.save(number)
    _truncate_data(str(tmp_path / "ckpt-3"))
    restored = _state()
    path, bad = checkpoints.restore_newest(restored, str(tmp_path))
    assert path.endswith("ckpt-2") and [os.path.basename(b) for b in bad] == ["ckpt-3"]
    assert float(restored.weights[0]) == 2.0
    assert "ckpt-3 is unreadable (IndexError" in caplog.text
    saver.forget(bad)
    saver.save(4)
    assert os.path.exists(tmp_path / "ckpt-2.index")  # the good one survives; the bad one is never trusted


def test_no_readable_checkpoint_is_one_line(tmp_path):
    saver = checkpoints.VerifiedCheckpoints(_state(), str(tmp_path), keep=3)
    saver.save(1)
    (tmp_path / "ckpt-1.index").write_bytes(b"short")
    with pytest.raises(
        DataError, match=r"no checkpoint in .* restores .*ckpt-1: unreadable.*new --model_dir"
    ):
        checkpoints.restore_newest(_state(), str(tmp_path))


def test_storage_trouble_on_restore_is_transient_not_a_fallback(tmp_path, monkeypatch):
    saver = checkpoints.VerifiedCheckpoints(_state(), str(tmp_path), keep=3)
    saver.save(1)
    state = _state()
    monkeypatch.setattr(
        state,
        "restore",
        lambda path: (_ for _ in ()).throw(tf.errors.UnavailableError(None, None, "503 Service Unavailable")),
    )
    with pytest.raises(TransientError, match="503"):
        checkpoints.restore_newest(state, str(tmp_path))


def _config(**overrides):
    fields = dict(
        model="unet",
        color_space="lab",
        loss="mse",
        base_filters=32,
        mixed_precision=False,
        init_from="",
        epochs=10,
    )
    return SimpleNamespace(**{**fields, **overrides})


def test_identity_is_recorded_then_enforced(tmp_path):
    model_dir = str(tmp_path / "run")
    checkpoints.check_identity(model_dir, _config(), write=True)
    checkpoints.check_identity(model_dir, _config(epochs=30), write=True)  # compatible change
    checkpoints.check_identity(model_dir, _config(init_from="starter"), write=True)  # resuming ignores it
    with pytest.raises(ConfigError) as error:
        checkpoints.check_identity(model_dir, _config(model="autoencoder", loss="l1"), write=False)
    message = str(error.value)
    assert "holds a run with --model=unet --loss=mse, not --model=autoencoder --loss=l1" in message
    assert "pass the same flags to resume it, or a new --model_dir" in message


def test_a_worker_that_must_not_write_leaves_a_new_model_dir_alone(tmp_path):
    checkpoints.check_identity(str(tmp_path / "run"), _config(), write=False)
    assert not os.path.exists(tmp_path / "run")


def _unet(base_filters=4, seed=0):
    keras.utils.set_random_seed(seed)
    return build_model("unet", preprocess.output_channels("lab", "mse"), base_filters=base_filters)


def _same_weights(a, b) -> bool:
    return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.variables, b.variables))


def test_init_from_reads_an_export_or_a_model_dir_into_a_new_model(tmp_path):
    trained = _unet(seed=1)
    config = _config(base_filters=4)
    export_dir = str(tmp_path / "export")
    export.export_saved_model(trained, "lab", export_dir, {"model": "unet", "loss": "mse", "base_filters": 4})
    for source in (export_dir, export.complete_versions(export_dir)[0]):
        fresh = _unet(seed=2)
        assert not _same_weights(fresh, trained)
        assert checkpoints.load_initial_weights(fresh, source, config).endswith("variables/variables")
        assert _same_weights(fresh, trained)
    model_dir = tmp_path / "run"
    best = checkpoints.VerifiedCheckpoints(tf.train.Checkpoint(model=trained), f"{model_dir}/best", keep=1)
    best.save(7)
    fresh = _unet(seed=2)
    assert checkpoints.load_initial_weights(fresh, str(model_dir), config).endswith("best/ckpt-7")
    assert _same_weights(fresh, trained)


def test_init_from_another_architecture_or_nothing_is_one_line(tmp_path):
    export_dir = str(tmp_path / "export")
    export.export_saved_model(_unet(), "lab", export_dir, {"model": "unet", "base_filters": 4})
    with pytest.raises(ConfigError, match="a --base_filters=4 model, not --base_filters=8: pass its flags"):
        checkpoints.load_initial_weights(_unet(8), export_dir, _config(base_filters=8))
    # Checked before a new run writes anything, so a corrected rerun finds its model_dir untouched.
    wider = _config(base_filters=8, init_from=export_dir, model_dir=str(tmp_path / "m"))
    with pytest.raises(ConfigError, match="a --base_filters=4 model, not --base_filters=8"):
        checkpoints.check_init_from(wider)
    assert not (tmp_path / "m").exists()
    os.remove(os.path.join(export.complete_versions(export_dir)[0], export.METADATA_FILE))
    with pytest.raises(ConfigError, match="its weights don't fit this model") as error:
        checkpoints.load_initial_weights(_unet(8), export_dir, _config(base_filters=8))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="no export, model_dir or checkpoint there"):
        checkpoints.load_initial_weights(_unet(), str(tmp_path / "none"), _config())
