import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from trainer.data.input_pipeline import find_shards, guard_reads
from trainer.errors import (
    EXIT_DIVERGED,
    PERMANENT_EXIT_CODES,
    ConfigError,
    DivergedError,
    TransientError,
)
from trainer.serve import preprocess
from trainer.train import preemption
from trainer.train.checkpoints import listed
from trainer.train.config import TrainConfig
from trainer.train.loop import Trainer
from trainer.train.steps import learning_rate


def _config(shards_dir, tmp_path, **overrides):
    values = dict(
        train_data=os.path.join(shards_dir, "train-*"),
        eval_data=os.path.join(shards_dir, "validation-*"),
        model_dir=str(tmp_path / "model"),
        export_dir=str(tmp_path / "export"),
        base_filters=4,
        batch_size=2,
        epochs=2,
        seed=1,
        loss="mse",  # the loop's mechanics; the bin losses (two_heads, the default) have their own test
    )
    values.update(overrides)
    return TrainConfig(**values)


def _trainer(config, strategy):
    return Trainer(config, strategy, find_shards(config.train_data), find_shards(config.eval_data))


@pytest.mark.system
def test_trains_on_two_replicas_writes_checkpoints_and_logs_and_resumes_with_optimizer_state(
    shards_dir, tmp_path, mirrored
):
    """Two epochs on two replicas; then a new Trainer restores the last checkpoint with Adam's moments,
    and another continues the run to a third epoch."""
    config = _config(shards_dir, tmp_path, checkpoint_every_steps=2)
    trainer = _trainer(config, mirrored)
    assert trainer.global_batch == 4 and trainer.steps_per_epoch == 3
    before = [w.numpy().copy() for w in trainer.model.trainable_weights]
    result = trainer.fit()
    assert result.epoch == 2 and result.step == 6
    assert np.isfinite(result.best_val_loss)
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, trainer.model.trainable_weights))
    assert tf.train.latest_checkpoint(tmp_path / "model" / "checkpoints").endswith("ckpt-6")
    assert os.listdir(tmp_path / "model" / "logs" / "train") and os.listdir(
        tmp_path / "model" / "logs" / "eval"
    )

    adam_moments = [v.numpy().copy() for v in trainer.optimizer.variables]
    restored = _trainer(config, mirrored)
    assert restored.restore() == 6
    for a, b in zip(adam_moments, restored.optimizer.variables):
        np.testing.assert_array_equal(a, b.numpy())
    longer = _trainer(_config(shards_dir, tmp_path, epochs=3, checkpoint_every_steps=2), mirrored)
    result = longer.fit()
    assert result.epoch == 3 and result.step == 9


@pytest.mark.system
def test_early_stopping_state_survives_restart(shards_dir, tmp_path, mirrored):
    # Validation losses are scripted (improve, then worsen) so the stop epoch doesn't depend on
    # training noise.
    config = _config(shards_dir, tmp_path, epochs=8, patience=2)
    first = _trainer(config, mirrored)
    val_losses = iter([1.0, 0.5, 0.7, 0.9])
    first._evaluate = lambda run_eval, eval_dist: next(val_losses)
    result = first.fit()
    assert result.epoch == 4 and result.step == 12 and result.best_val_loss == 0.5
    again = _trainer(config, mirrored).fit()
    assert again.already_finished
    assert again.epoch == result.epoch and again.step == result.step and again.best_val_loss == 0.5


def test_invalid_config_is_rejected(shards_dir, tmp_path):
    with pytest.raises(ConfigError, match="--batch_size=0"):
        _config(shards_dir, tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match="--color_space='hsv'"):
        _config(shards_dir, tmp_path, color_space="hsv")


@pytest.mark.system
@pytest.mark.parametrize("loss,extra", [("classification", 0), ("two_heads", 2)])
def test_bin_losses_and_cosine_schedule_train(shards_dir, tmp_path, mirrored, loss, extra):
    config = _config(shards_dir, tmp_path, loss=loss, lr_schedule="cosine", epochs=1)
    trainer = _trainer(config, mirrored)
    assert trainer.model.output_shape[-1] == len(preprocess.ab_bins()) + extra
    result = trainer.fit()
    assert result.step == 3 and np.isfinite(result.best_val_loss)
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)  # decayed by the last step


def test_cosine_schedule_warms_up_then_decays_to_zero(shards_dir, tmp_path):
    schedule = learning_rate(
        _config(shards_dir, tmp_path, lr_schedule="cosine", epochs=4), steps_per_epoch=10
    )
    assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(25)) < 1e-3 and float(schedule(40)) == pytest.approx(0.0, abs=1e-9)


def test_loss_and_schedule_are_validated(shards_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs --color_space=lab"):
        _config(shards_dir, tmp_path, loss="classification", color_space="rgb")
    with pytest.raises(ConfigError, match="--loss='hinge'"):
        _config(shards_dir, tmp_path, loss="hinge")
    with pytest.raises(ConfigError, match="--lr_schedule='step'"):
        _config(shards_dir, tmp_path, lr_schedule="step")


def test_pacer_sizes_calls_from_timings_and_agrees_through_an_all_reduce(mirrored):
    asked = []
    # num_workers=2 takes the all-reduce path; the two local replicas stand in for two workers.
    pacer = preemption.Pacer(mirrored, 2, lambda: bool(asked))
    pacer.timed(1, 30.0)  # the first call includes tracing: not a measure of step time
    assert not pacer.stop_agreed() and pacer.steps_per_call == 1
    pacer.timed(10, 1.0)
    assert not pacer.stop_agreed() and pacer.steps_per_call == 20  # 2 s worth of 0.1 s steps
    pacer.timed(20, 0.001)
    assert not pacer.stop_agreed() and pacer.steps_per_call == preemption.MAX_STEPS_PER_CALL
    asked.append(True)
    assert pacer.stop_agreed()


def test_sigterm_watch_only_records_and_survives_a_second_signal():
    watch, previous = preemption.SigtermWatch(), signal.getsignal(signal.SIGTERM)
    try:
        watch.install()
        assert not watch.requested()
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
        assert watch.requested()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_storage_trouble_is_transient_and_a_lost_peer_passes_through(shards_dir, tmp_path):
    shards = find_shards(os.path.join(shards_dir, "train-*"))

    def fails(error):
        def run():
            raise error

        return run

    unavailable = tf.errors.AbortedError(
        None, None, f"All 10 retry attempts failed. The last failure: HTTP 503 when reading {shards.files[1]}"
    )
    with pytest.raises(TransientError, match=r"reading .*train-\*: storage unavailable after retries"):
        guard_reads(fails(unavailable), shards)
    peer = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: failed to connect")
    with pytest.raises(tf.errors.UnavailableError):
        guard_reads(fails(peer), shards)


def test_checkpoint_storage_errors_are_one_line_and_classified(shards_dir, tmp_path, mirrored, monkeypatch):
    trainer = _trainer(_config(shards_dir, tmp_path), mirrored)

    def failing(error):
        def save(*args, **kwargs):
            raise error

        return save

    monkeypatch.setattr(
        trainer.checkpoints.latest, "save", failing(tf.errors.UnavailableError(None, None, "HTTP 503"))
    )
    with pytest.raises(TransientError, match="checkpoints in .*model: storage unavailable"):
        trainer.checkpoints.save_latest(1)
    monkeypatch.setattr(
        trainer.checkpoints.best,
        "save",
        failing(tf.errors.PermissionDeniedError(None, None, "no access")),
    )
    with pytest.raises(ConfigError, match="checkpoints in .*model: no access"):
        trainer.checkpoints.save_best(1)


@pytest.mark.system
def test_a_diverged_run_stops_with_its_own_exit_code_and_exports_nothing(shards_dir, tmp_path, mirrored):
    from trainer.train import run

    config = _config(shards_dir, tmp_path, learning_rate=1e30, checkpoint_every_steps=1)
    with pytest.raises(
        DivergedError, match=r"training diverged: (validation )?loss is (nan|inf).*lower --learning_rate"
    ):
        run.train_and_export(config, mirrored)
    assert DivergedError.exit_code == EXIT_DIVERGED and EXIT_DIVERGED in PERMANENT_EXIT_CODES
    assert not os.path.exists(tmp_path / "export") or not os.listdir(tmp_path / "export")
    for path in listed(str(tmp_path / "model" / "checkpoints")):  # a restart never resumes from NaN
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            value = np.asarray(reader.get_tensor(name))
            floating = (
                np.issubdtype(value.dtype, np.floating) and "best_val_loss" not in name
            )  # starts at inf
            assert not floating or np.isfinite(value).all(), (path, name)
