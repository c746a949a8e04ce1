"""Checkpoints a fault can't cost more than the work since the last good one.

* Every save is read back (each tensor, with its CRC32C) before it counts: under storage faults
  TF has written truncated checkpoint indexes without raising. A save that fails or doesn't
  verify is retried; one that keeps failing is a TransientError (a restart resumes).
* Old checkpoints are deleted only after a newer one verified, so a bad save never pushes out a
  good checkpoint.
* Restoring falls back from an unreadable newest checkpoint to the newest one that restores.
* model_dir records the run's identity (the flags that decide what its variables are), so a
  restart with other flags is refused in one line instead of a restore traceback.
* A new run may start from another run's weights (`--init_from`: the packaged starter, an export
  or a model_dir), with a fresh optimizer.
"""

import json
import os
import posixpath
import re
import tempfile
import time

import tensorflow as tf
from absl import logging

from trainer.data.storage import read_json, replace_text, write_text_verified
from trainer.errors import (
    ConfigError,
    DataError,
    TransientError,
    first_line,
    storage_errors,
    transient_storage_errors,
)
from trainer.serve.export import METADATA_FILE, resolve_saved_model

# The flags that decide a checkpoint's variables (and their meaning); epochs, patience or cadence
# may change between restarts. mixed_precision wraps the optimizer (loss-scale variables).
IDENTITY_FLAGS = ("model", "color_space", "loss", "base_filters", "mixed_precision")
# Recorded with them, not enforced: a resumed run reads its weights from its checkpoint.
RECORDED_FLAGS = IDENTITY_FLAGS + ("init_from",)
# What an exported or checkpointed model must share with a run that starts from its weights.
ARCHITECTURE_FLAGS = ("model", "color_space", "loss", "base_filters")
IDENTITY_FILE = "run.json"
# IndexError: a data file shorter than its index says; ValueError/NotImplementedError: Keras refusing a
# checkpoint whose variables don't match the model (a model_dir from before run.json existed).
READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, NotImplementedError)
# Storage trouble rather than a bad file: falling back to an older checkpoint would throw work away.
# InternalError is left out: TF reports some corrupt files with it.
STORAGE_ERRORS = tuple(e for e in transient_storage_errors() if e is not tf.errors.InternalError)
_NUMBER = re.compile(r"-(\d+)$")


def check_identity(model_dir: str, config, write: bool) -> None:
    """Refuses a model_dir started with different IDENTITY_FLAGS; records them when the run is new."""
    path = os.path.join(model_dir, IDENTITY_FILE)
    wanted = {name: getattr(config, name) for name in RECORDED_FLAGS}
    recorded = read_json(path)
    if recorded is not None:
        differ = [n for n in IDENTITY_FLAGS if n in recorded and recorded[n] != wanted[n]]
        if differ:
            was = " ".join(f"--{n}={recorded[n]}" for n in differ)
            now = " ".join(f"--{n}={wanted[n]}" for n in differ)
            raise ConfigError(
                f"--model_dir={model_dir} holds a run with {was}, not {now}: pass the same flags "
                "to resume it, or a new --model_dir to start another run"
            )
    elif write:
        tf.io.gfile.makedirs(model_dir)
        write_text_verified(path, json.dumps(wanted, indent=2))


def number(path: str) -> int:
    """The step a checkpoint `.../ckpt-N` was saved at."""
    return int(_NUMBER.search(path).group(1))


def _verify(prefix: str) -> None:
    """Reads every tensor back: the index parses and each tensor's bytes match their CRC32C.

    A remote checkpoint is copied to local disk first: one read per file, where reading it in place
    costs a request per tensor (hundreds for the default U-Net and its optimizer slots).
    """
    if "://" not in prefix:
        _read_every_tensor(prefix)
        return
    with tempfile.TemporaryDirectory(prefix="colorizer-verify-") as local:
        for path in tf.io.gfile.glob(f"{prefix}.*"):
            tf.io.gfile.copy(path, os.path.join(local, os.path.basename(path)))
        _read_every_tensor(os.path.join(local, os.path.basename(prefix)))


def _read_every_tensor(prefix: str) -> None:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {first_line(getattr(exc, 'message', exc), 200)}"


def listed(directory: str) -> list:
    """The checkpoints in `directory`, oldest first, found by their index files.

    Not from the `checkpoint` state file: that is one more object a storage fault can truncate.
    """
    if not tf.io.gfile.isdir(directory):
        return []
    prefixes = [name[: -len(".index")] for name in tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index"))]
    return sorted((p for p in prefixes if _NUMBER.search(p)), key=number)


def restore_newest(checkpoint: tf.train.Checkpoint, directory: str, partial: bool = False):
    """Restores the newest checkpoint of `directory` that reads; returns (path or None, bad paths).

    A checkpoint that fails to read is named in a warning and skipped; if some exist and none
    restores, that is a DataError: restarting would fail the same way.
    """
    bad = []
    for path in reversed(listed(directory)):
        try:
            status = checkpoint.restore(path)
            if partial:
                status.expect_partial()
            if bad:
                logging.warning("resuming from %s instead", path)
            return path, bad
        except STORAGE_ERRORS as exc:
            raise TransientError(f"reading checkpoint {path}: {_first_line(exc)}") from None
        except READ_ERRORS as exc:
            logging.warning(
                "checkpoint %s is unreadable (%s); trying the one before it", path, _first_line(exc)
            )
            bad.append(path)
    if bad:
        raise DataError(
            f"no checkpoint in {directory} restores (newest {bad[0]}: unreadable, or from a run "
            "with other flags); delete them to start over, or pass a new --model_dir"
        )
    return None, bad


class VerifiedCheckpoints:
    """Saves numbered checkpoints into one directory, keeping the newest `keep` that verified."""

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        directory: str,
        keep: int,
        interval: int = 0,
        retries: int = 3,
        retry_seconds: float = 2.0,
    ):
        self.checkpoint, self.directory, self.keep, self.interval = checkpoint, directory, keep, interval
        self.retries, self.retry_seconds = retries, retry_seconds
        self.paths = listed(directory)

    @property
    def latest(self):
        return self.paths[-1] if self.paths else None

    def forget(self, paths) -> None:
        """Stops tracking unreadable checkpoints (found on restore): they never push out a good one."""
        self.paths = [p for p in self.paths if p not in set(paths)]

    def save(self, step: int, force: bool = True):
        """Writes, verifies and records checkpoint `ckpt-{step}`; None when the interval says not yet."""
        if not force and self.interval and self.latest and step - number(self.latest) < self.interval:
            return None
        prefix = os.path.join(self.directory, f"ckpt-{step}")
        for attempt in range(1, self.retries + 1):
            try:
                path = self.checkpoint.write(prefix)
                _verify(path)
                break
            except READ_ERRORS as exc:  # storage errors included: TF's retries are spent, ours are not
                if attempt == self.retries:
                    raise TransientError(
                        f"checkpoint {prefix} failed {attempt} times ({_first_line(exc)}); "
                        "a restart resumes from the last good one"
                    ) from None
                logging.warning(
                    "checkpoint %s failed to save or verify (%s); retrying", prefix, _first_line(exc)
                )
                time.sleep(self.retry_seconds * attempt)
        self.paths = [p for p in self.paths if p != path] + [path]
        self._record()
        return path

    def _record(self) -> None:
        """Writes the state file, then deletes what fell out of the newest `keep`."""
        dropped, self.paths = self.paths[: -self.keep], self.paths[-self.keep :]
        names = [os.path.basename(p) for p in self.paths]
        state = [f'model_checkpoint_path: "{names[-1]}"'] + [
            f'all_model_checkpoint_paths: "{n}"' for n in names
        ]
        # for tf.train.latest_checkpoint and TensorBoard, which must never read it half-written
        replace_text(os.path.join(self.directory, "checkpoint"), "\n".join(state) + "\n")
        for path in dropped:
            for name in tf.io.gfile.glob(f"{path}.*"):
                tf.io.gfile.remove(name)


def worker_dir(shared: str, chief: bool, prefix: str = "colorizer-worker-") -> str:
    """Where this worker writes: the chief into `shared`, the others into a throwaway local folder.

    All workers must take part in saving (reading variables can involve collectives), but only one
    copy may land in the shared folder: the standard multi-worker pattern, for checkpoints and exports.
    """
    return shared if chief else tempfile.mkdtemp(prefix=prefix)


class RunCheckpoints:
    """A run's two series in model_dir: `checkpoints/` (resume where it stopped) and `best/` (export).

    The chief saves into model_dir, other workers into throwaway folders; every worker restores
    from model_dir. Storage trouble is transient (exit 145); a missing bucket or permission is a
    configuration error (exit 2).
    """

    def __init__(self, config, training_checkpoint: tf.train.Checkpoint, model, chief: bool):
        self.model_dir, self.chief = config.model_dir, chief
        self.shared = os.path.join(config.model_dir, "checkpoints"), os.path.join(config.model_dir, "best")
        with self.storage():
            check_identity(config.model_dir, config, write=chief)
            self.latest = VerifiedCheckpoints(
                training_checkpoint,
                worker_dir(self.shared[0], chief),
                keep=3,
                interval=config.checkpoint_every_steps,
            )
            self.best = VerifiedCheckpoints(
                tf.train.Checkpoint(model=model), worker_dir(self.shared[1], chief), keep=1
            )

    @property
    def directory(self) -> str:
        """This worker's folder of resumable checkpoints (model_dir's on the chief)."""
        return self.latest.directory

    def storage(self):
        return storage_errors(f"checkpoints in {self.model_dir}", ConfigError)

    def restore(self):
        """Restores the chief's latest checkpoint; returns its path or None (a new run).

        Other workers also copy the chief's best weights into their own folder, so every worker
        restores the same best weights at the end of the run.
        """
        with self.storage():
            if not self.chief:
                best, _ = restore_newest(self.best.checkpoint, self.shared[1], partial=True)
                if best:
                    self.best.save(number(best))
            latest, unreadable = restore_newest(self.latest.checkpoint, self.shared[0])
            if self.chief:
                self.latest.forget(unreadable)
        return latest

    def save_latest(self, step: int, force: bool = True) -> None:
        """Saves the resumable state at `step`; force=False: only when --checkpoint_every_steps is due."""
        with self.storage():
            self.latest.save(step, force=force)

    def save_best(self, step: int) -> None:
        with self.storage():
            self.best.save(step)

    def restore_best(self) -> None:
        """Loads the best epoch's weights into the model (for export)."""
        with self.storage():
            restore_newest(self.best.checkpoint, self.best.directory, partial=True)


def _initial_weights(source: str) -> tuple:
    """(prefix, layout, metadata) of the weights `--init_from` names; layout "export" or "model"."""
    if tf.io.gfile.exists(source + ".index"):  # model_dir/{best,checkpoints}/ckpt-N
        model_dir = posixpath.dirname(posixpath.dirname(source))
        return source, "model", read_json(posixpath.join(model_dir, IDENTITY_FILE))
    for series in ("best", "checkpoints"):
        found = listed(os.path.join(source, series))
        if found:
            return found[-1], "model", read_json(os.path.join(source, IDENTITY_FILE))
    try:
        saved_model = resolve_saved_model(source)
    except DataError as exc:
        found = "no export, model_dir or checkpoint there" if "no SavedModel" in str(exc) else str(exc)
        raise ConfigError(f"--init_from={source}: {found}") from None
    metadata = read_json(os.path.join(saved_model, METADATA_FILE))
    return os.path.join(saved_model, "variables", "variables"), "export", metadata


def _check_architecture(source: str, metadata, config) -> None:
    differ = [n for n in ARCHITECTURE_FLAGS if n in (metadata or {}) and metadata[n] != getattr(config, n)]
    if differ:
        was = " ".join(f"--{n}={metadata[n]}" for n in differ)
        now = " ".join(f"--{n}={getattr(config, n)}" for n in differ)
        raise ConfigError(
            f"--init_from={source} holds a {was} model, not {now}: pass its flags, or leave out "
            "--init_from to train from scratch"
        )


def _check_shapes(source: str, prefix: str, model) -> None:
    """An export's variables (`tf_variables/N`) have the model's count and shapes, before reading any."""
    stored = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    shapes = [stored.get(f"tf_variables/{n}/.ATTRIBUTES/VARIABLE_VALUE") for n in range(len(stored))]
    shapes = [shape for shape in shapes if shape is not None]
    wanted = [list(v.shape) for v in model.variables]
    if shapes != wanted:
        raise ConfigError(
            f"--init_from={source}: its weights don't fit this model ({len(shapes)} variables, "
            f"not {len(wanted)} of these shapes); pass the flags it was trained with"
        )


def check_init_from(config) -> None:
    """Before a new run writes anything: --init_from names weights, of this architecture as far as
    their recorded flags tell (the variables' shapes are checked when they are read)."""
    with storage_errors(f"--init_from={config.init_from}", ConfigError):
        _, _, metadata = _initial_weights(config.init_from)
    _check_architecture(config.init_from, metadata, config)


def load_initial_weights(model, source: str, config) -> str:
    """Reads `source`'s weights into `model` (the optimizer stays fresh); returns the checkpoint read.

    A different architecture is a one-line ConfigError, found from the source's recorded flags or,
    for older sources, from the variables' shapes.
    """
    with storage_errors(f"--init_from={source}", ConfigError):
        prefix, layout, metadata = _initial_weights(source)
        _check_architecture(source, metadata, config)
        if layout == "export":  # the exported module tracks the backend variables in model order
            _check_shapes(source, prefix, model)
            checkpoint = tf.train.Checkpoint(tf_variables=[v.value for v in model.variables])
        else:
            checkpoint = tf.train.Checkpoint(model=model)
        try:
            checkpoint.read(prefix).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError) as exc:
            raise ConfigError(
                f"--init_from={source}: its weights don't fit this model ({_first_line(exc)}); pass "
                "the flags it was trained with"
            ) from None
    return prefix
