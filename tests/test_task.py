"""End to end: the real CLIs in subprocesses, as a user runs them."""

import json
import os
import re
import signal
import time

import pytest
import tensorflow as tf
from absl import flags

from tests import forkserver
from tests.conftest import REPO
from tests.workers import ENV, checkpoint_step, start
from trainer.errors import ConfigError, TransientError
from trainer.train import config as config_lib

pytestmark = pytest.mark.system  # real processes, servers or a second TensorFlow (README: test tiers)


def _cli(module, *args, cwd=REPO, env=ENV):
    return forkserver.run(module, args, env, cwd)


def _wait_for(proc, log, found, seconds=300):
    """Polls `log` until `found(text)` is truthy (returned), failing if the process ends first."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        text = log.read_text()
        if result := found(text):
            return result
        assert proc.poll() is None, text
        time.sleep(0.2)
    raise AssertionError(f"not found in {seconds} s: {log.read_text()}")


def test_prepare_train_kill_stop_resume_export_serve(prepared_photos, tmp_path):
    """On what the prepare CLI made (the session's `prepared_photos`): SIGKILL (no warning) and SIGTERM
    (a preemption notice: save, exit 143) each leave a run that the same command resumes; only the
    finished run exports."""
    flags = [
        f"--train_data={prepared_photos}/train-*",
        f"--eval_data={prepared_photos}/validation-*",
        f"--model_dir={tmp_path}/model",
        f"--export_dir={tmp_path}/export",
        "--base_filters=4",
        "--batch_size=2",
        "--checkpoint_every_steps=1",
        "--patience=0",
    ]
    checkpoints = tmp_path / "model" / "checkpoints"
    killed_log = tmp_path / "killed.log"
    proc = start([*flags, "--epochs=1000"], {}, open(killed_log, "w"))
    _wait_for(proc, killed_log, lambda _: checkpoint_step(checkpoints) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_step(checkpoints)
    assert killed_at >= 3 and os.listdir(tmp_path / "export") == []  # checked writable, nothing exported

    stopped_log = tmp_path / "stopped.log"
    proc = start([*flags, "--epochs=1000"], {}, open(stopped_log, "w"))
    resumed = _wait_for(proc, stopped_log, lambda t: re.search(r"resuming from step (\d+)", t))
    assert int(resumed.group(1)) >= killed_at
    epoch_end = _wait_for(proc, stopped_log, lambda t: re.search(r"epoch \d+/1000 step (\d+) loss", t))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    saved = checkpoint_step(checkpoints)
    assert saved >= int(epoch_end.group(1)) and "checkpoint saved" in stopped_log.read_text()
    assert os.listdir(tmp_path / "export") == []

    steps_per_epoch = int(re.search(r"(\d+) steps/epoch", stopped_log.read_text()).group(1))
    finished = _cli("trainer.task", *flags, f"--epochs={saved // steps_per_epoch + 1}")
    assert finished.returncode == 0, finished.stderr
    assert f"resuming from step {saved}" in finished.stderr
    export = re.search(r"SavedModel:\s+(\S+)", finished.stdout).group(1)
    assert os.path.exists(os.path.join(export, "saved_model.pb"))
    loaded = tf.saved_model.load(export)
    gray = tf.io.encode_png(tf.zeros([30, 40, 1], tf.uint8) + 128)
    png = loaded.signatures["serving_default"](image_bytes=tf.stack([gray]))["colorized_bytes"][0]
    assert tf.io.decode_png(png).shape == (30, 40, 3)


def test_no_flags_fine_tunes_the_starter_on_the_bundled_sample_with_a_quiet_log(tmp_path):
    newcomer = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # nothing set: the quiet default
    run = _cli("trainer.task", "--epochs=1", cwd=tmp_path, env=newcomer)
    assert run.returncode == 0, run.stderr
    assert "64 training / 16 validation examples" in run.stderr
    lines = (run.stderr + run.stdout).strip().splitlines()
    assert len(lines) <= 25, "\n".join(lines)
    noise = re.compile(
        r"oneDNN|cuInit|cudart|cpu_feature_guard|InitializeLog|Sharding callback|unsupported characters|"
        r"Assets written|INFO:tensorflow|fingerprint"
    )
    assert not [line for line in lines if noise.search(line)], "\n".join(lines)
    assert re.search(r"^colorize: +python -m trainer.client --local_model=\S+ PHOTO.jpg", run.stdout, re.M)
    versions = os.listdir(tmp_path / "runs" / "colorizer" / "export")
    assert len(versions) == 1 and versions[0].isdigit()
    assert os.path.exists(tmp_path / "runs" / "colorizer" / "export" / versions[0] / "saved_model.pb")
    # The first model a newcomer sees is the packaged starter fine-tuned on the sample, not a fresh one.
    assert re.search(r"starting from the weights of \S+/trainer/starter/variables/variables", run.stderr)
    exported = tmp_path / "runs" / "colorizer" / "export" / versions[0]
    metadata = json.loads((exported / "colorizer.json").read_text())
    assert metadata["init_from"] == "starter"


def test_pattern_matching_nothing_is_one_line_error(tmp_path):
    run = _cli("trainer.task", f"--train_data={tmp_path}/nothing-*.tfrecord", f"--model_dir={tmp_path}/m")
    assert run.returncode == 3
    assert f"error: no files match {tmp_path}/nothing-*.tfrecord" in run.stderr
    assert "Traceback" not in run.stderr and not os.path.exists(tmp_path / "m")


def test_bad_flag_value_exits_2(tmp_path):
    run = _cli("trainer.task", "--batch_size=0", f"--model_dir={tmp_path}/m")
    assert run.returncode == 2 and "error: --batch_size=0: must be at least 1" in run.stderr


def test_alone_a_failing_file_system_is_transient_and_a_cancellation_is_not(monkeypatch, mirrored):
    """Without peers, Unavailable/Aborted/DeadlineExceeded can only come from storage (145)."""
    from trainer.train import run

    def failing(error):
        def raise_it(*args):
            raise error

        return raise_it

    monkeypatch.setattr(
        run,
        "train_and_export",
        failing(tf.errors.AbortedError(None, None, "All 10 retry attempts failed\nmore")),
    )
    with pytest.raises(
        TransientError, match=r"^storage unavailable \(AbortedError: All 10 retry attempts failed\)"
    ):
        run.train_and_export_guarded(None, mirrored, lambda: False)
    monkeypatch.setattr(run, "train_and_export", failing(tf.errors.CancelledError(None, None, "cancelled")))
    with pytest.raises(tf.errors.CancelledError):
        run.train_and_export_guarded(None, mirrored, lambda: False)


def test_with_peers_a_failed_collective_or_nccl_error_is_a_lost_peer_and_other_internal_errors_are_not(
    monkeypatch, capsys
):
    """Exit 144 (retriable) for what a dead peer causes, including NCCL's InternalError once steps
    ran in this attempt; an NCCL error before any step (its setup) and a bug stay errors (exit 1)."""
    from trainer.errors import EXIT_PEER_LOST
    from trainer.train import run

    peers = object.__new__(type("Peers", (tf.distribute.MultiWorkerMirroredStrategy,), {}))

    def failing(error, steps_run):
        def train_and_export(*args):
            args[-1]["trainer"] = type("Trainer", (), {"steps_run": steps_run})()
            raise error

        return train_and_export

    nccl = tf.errors.InternalError(None, None, "ncclSystemError: System call failed\nNCCL WARN socket closed")
    down = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: peer down")
    for error, reason, steps in ((nccl, "ncclSystemError: System call failed", 8), (down, "aborted by", 0)):
        monkeypatch.setattr(run, "train_and_export", failing(error, steps))
        with pytest.raises(SystemExit) as exited:
            run.train_and_export_guarded(None, peers, lambda: False)
        assert exited.value.code == EXIT_PEER_LOST and reason in capsys.readouterr().err
    bug = tf.errors.InternalError(None, None, "Dst tensor is not initialized")
    for error, steps in ((nccl, 0), (bug, 8)):  # NCCL failing before any step: its setup, not a peer
        monkeypatch.setattr(run, "train_and_export", failing(error, steps))
        with pytest.raises(tf.errors.InternalError):
            run.train_and_export_guarded(None, peers, lambda: False)


@pytest.fixture(scope="module")
def small_data(prepared_photos):
    return prepared_photos


def _train(data, run_dir, epochs, *extra):
    from tests.workers import train_flags

    return _cli("trainer.task", *train_flags(data, run_dir, epochs, *extra))


def _checked(data, run_dir, epochs, *extra):
    """In-process, what `python -m trainer.task` checks before any cluster or model. A user error
    there is a ConfigError, which the CLI turns into one line and exit 2 (see the unwritable-output test)."""
    from tests.workers import train_flags
    from trainer.train import run

    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["trainer.task", *train_flags(data, run_dir, epochs, *extra)])
    run.check_before_training(config_lib.config_from_flags(values, {})[0])


def _one_line(run, code, start):
    assert run.returncode == code, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(start), run.stderr
    assert "Traceback" not in run.stderr


def test_unwritable_output_fails_before_any_step_in_one_line(small_data, tmp_path):
    (tmp_path / "file").write_text("a file where the export folder should go")
    start = time.monotonic()
    run = _train(small_data, tmp_path, 1, f"--export_dir={tmp_path}/file/export")
    _one_line(run, 2, f"error: --export_dir={tmp_path}/file/export: not writable (")
    assert time.monotonic() - start < 30 and "epoch 1/" not in run.stderr
    assert not os.path.exists(tmp_path / "model" / "checkpoints")


def test_model_dir_guards_its_run_survives_bad_checkpoints_and_a_finished_run_is_left_alone(
    small_data, tmp_path
):
    first = _train(small_data, tmp_path, 1, "--checkpoint_every_steps=2")
    assert first.returncode == 0, first.stderr
    with pytest.raises(ConfigError) as other:
        _checked(small_data, tmp_path, 2, "--model=autoencoder", "--color_space=rgb")
    assert str(other.value).startswith(
        f"--model_dir={tmp_path}/model holds a run with --model=unet --color_space=lab, "
        "not --model=autoencoder --color_space=rgb: pass the same flags"
    )

    checkpoints = tmp_path / "model" / "checkpoints"
    [data] = [p for p in os.listdir(checkpoints) if p.startswith("ckpt-8.data")]
    (checkpoints / data).write_bytes(
        (checkpoints / data).read_bytes()[:100]
    )  # a half-copied newest checkpoint
    resumed = _train(small_data, tmp_path, 2, "--checkpoint_every_steps=2", "--log_format=json")
    assert resumed.returncode == 0, resumed.stderr  # compatible changes: more epochs, JSON logs
    assert "ckpt-8 is unreadable" in resumed.stderr and "resuming from step 6" in resumed.stderr
    assert checkpoint_step(checkpoints) == 16 and len(os.listdir(tmp_path / "export")) == 2
    records = [json.loads(line) for line in (resumed.stderr + resumed.stdout).splitlines()]  # every line
    assert all(r["severity"] in ("INFO", "WARNING", "ERROR") and r["message"] for r in records), records
    assert {"WARNING", "INFO"} <= {r["severity"] for r in records}
    assert any(r["message"].startswith("SavedModel:  ") for r in records)
    [epoch] = [r for r in records if r["message"].startswith("epoch 2/2 step 16 loss")]
    assert epoch["step"] == 16 and epoch["val_loss"] > 0 and epoch["val_psnr"] > 0
    assert epoch["images_per_s"] > 0 and epoch["early_stopped"] is False

    again = _train(small_data, tmp_path, 2, "--checkpoint_every_steps=2")
    assert again.returncode == 0, again.stderr
    assert (
        "this run already finished (epoch 2 of 2)" in again.stderr
        and "already exported at step 16" in again.stderr
    )
    assert len(os.listdir(tmp_path / "export")) == 2

    tuned = _train(small_data, tmp_path / "tuned", 1, f"--init_from={tmp_path}/export")
    assert tuned.returncode == 0, tuned.stderr
    assert re.search(rf"starting from the weights of {tmp_path}/export/\d+/variables/variables", tuned.stderr)
    [version] = os.listdir(tmp_path / "tuned" / "export")
    metadata = json.loads((tmp_path / "tuned" / "export" / version / "colorizer.json").read_text())
    assert metadata["init_from"] == f"{tmp_path}/export" and metadata["base_filters"] == 4
    with pytest.raises(ConfigError) as wider:
        _checked(small_data, tmp_path / "wider", 1, f"--init_from={tmp_path}/export", "--base_filters=8")
    assert str(wider.value).startswith(
        f"--init_from={tmp_path}/export holds a --base_filters=4 model, not --base_"
    )
    assert not os.path.exists(tmp_path / "wider"), "refused before any output folder is made"

    for index in checkpoints.glob("*.index"):
        index.write_bytes(b"truncated")
    broken = _train(small_data, tmp_path, 3)
    _one_line(broken, 3, f"error: no checkpoint in {checkpoints} restores")


def test_an_export_cut_off_before_saved_model_pb_does_not_count_as_done(tmp_path):
    from trainer.train import run

    version = tmp_path / "export" / "1700000000"
    version.mkdir(parents=True)
    (version / "colorizer.json").write_text('{"model_dir": "gs://b/m", "step": 16}')
    assert run.previous_export(str(tmp_path / "export"), "gs://b/m", 16) is None  # saved_model.pb goes last
    (version / "saved_model.pb").write_bytes(b"pb")
    assert run.previous_export(str(tmp_path / "export"), "gs://b/m", 16) == str(version)
    assert run.previous_export(str(tmp_path / "export"), "gs://b/m", 17) is None
