"""trainer.train.actions: what runs around the loop (progress inside an epoch, the profiler, memory)."""

import glob
import logging as py_logging
from types import SimpleNamespace

import pytest
import tensorflow as tf

from trainer.errors import ConfigError
from trainer.train import actions
from trainer.train.config import TrainConfig


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_inside_an_epoch_counts_only_the_steps_this_attempt_ran(caplog, tmp_path):
    clock = _Clock()
    writers = actions.Writers(str(tmp_path), enabled=True)
    progress = actions.StepProgress(60, global_batch=32, writers=writers, clock=clock)
    progress.start_epoch(epoch=2, epochs=10, step=250, end=1000)  # resumed mid-epoch at step 250
    caplog.set_level(py_logging.INFO, logger="absl")
    clock.now = 30.0
    progress(350, 5.0)  # too soon: nothing
    clock.now = 100.0
    progress(500, 4.5)
    [record] = [r for r in caplog.records if "epoch 3/10 step 500/1000" in r.getMessage()]
    assert record.getMessage() == "epoch 3/10 step 500/1000 loss 4.5000 (80 images/s); epoch ETA 3 min"
    assert record.fields == {
        "epoch": 3,
        "step": 500,
        "loss": 4.5,
        "images_per_s": 80.0,  # 250 steps x 32 in 100 s, not the epoch's 500
        "epoch_eta_seconds": 500 * 32 / 80.0,
    }
    writers.train.flush()
    assert glob.glob(f"{tmp_path}/train/events.out.tfevents.*")


def test_profile_steps_write_a_tensorboard_profile_of_that_range(tmp_path):
    profiler = actions.Profiler((2, 4), str(tmp_path), enabled=True)
    for step in range(6):
        profiler(step)
        tf.reduce_sum(tf.random.uniform([64, 64]) @ tf.random.uniform([64, 64]))
        assert profiler.running == (2 <= step < 4)
    assert glob.glob(f"{tmp_path}/plugins/profile/*/*.xplane.pb")
    assert actions.Profiler((2, 4), str(tmp_path / "other"), enabled=False).steps is None  # not the chief


def test_profile_steps_flag_is_two_ordered_step_numbers():
    config = TrainConfig("a", "b", "c", "d", profile_steps="10, 20")
    assert config.profile_range == (10, 20)
    for bad in ("10", "20,10", "a,b"):
        with pytest.raises(ConfigError, match=f"--profile_steps='?{bad}'?: "):
            TrainConfig("a", "b", "c", "d", profile_steps=bad)


def test_peak_gpu_memory_is_read_and_reset_per_epoch(monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(tf.config.experimental, "get_memory_info", lambda name: {"current": 1, "peak": 9e9})
    monkeypatch.setattr(tf.config.experimental, "reset_memory_stats", calls.append)
    gpus = [SimpleNamespace(name="/physical_device:GPU:0"), SimpleNamespace(name="/physical_device:GPU:1")]
    assert actions.peak_memory(gpus) == {"GPU:0": 9e9, "GPU:1": 9e9} and calls == ["GPU:0", "GPU:1"]
    assert actions.peak_memory([]) == {}
    end = actions.EpochEnd(1, 2, 10, 1.0, 1.0, 100.0, 0.0, {"GPU:0": 9.2e9})
    caplog.set_level(py_logging.INFO, logger="absl")
    actions.log_epoch(end, {}, stopped=False)
    assert "(100 images/s, peak GPU:0 memory 9.2 GB)" in caplog.records[-1].getMessage()
