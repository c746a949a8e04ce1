"""One run, start to end: check what can be checked first, train, fit the decode, export once.

`trainer.task` builds the configs and the strategy and calls `check_before_training`, then
`train_and_export_guarded`; the stages themselves live in their own modules.
"""

import dataclasses
import functools
import os
import re
import shutil
import sys
from typing import Optional

import tensorflow as tf
from absl import logging

from trainer.data import storage
from trainer.data.input_pipeline import find_shards
from trainer.errors import EXIT_PEER_LOST, ConfigError, TransientError, first_line, storage_errors
from trainer.serve import preprocess
from trainer.serve.export import METADATA_FILE, complete_versions, export_saved_model
from trainer.train import checkpoints, decode_fit, distribute
from trainer.train.config import TrainConfig
from trainer.train.loop import FitResult, Trainer


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a run attempt did: the fit, this worker's checkpoint folder and the chief's export."""

    fit: FitResult
    checkpoints: str
    export: Optional[str] = None  # the chief's version folder; None on other workers or when preempted


def verify_data(config: TrainConfig) -> tuple:
    """The training and validation shards, checked against their manifests."""
    return find_shards(config.train_data), find_shards(config.eval_data)


def check_before_training(config: TrainConfig) -> tuple:
    """On every worker, before peers or model: data complete, outputs writable, model_dir's run the same.

    Returns the verified shards. Nothing is created when the data, the model_dir or --init_from is wrong.
    """
    shards = verify_data(config)
    with storage_errors(f"--model_dir={config.model_dir}", ConfigError):
        checkpoints.check_identity(config.model_dir, config, write=False)
        resuming = checkpoints.listed(os.path.join(config.model_dir, "checkpoints"))
    if config.init_from and not resuming:
        checkpoints.check_init_from(config)
    storage.check_outputs(  # last: it creates the output folders
        {"model_dir": config.model_dir, "tensorboard_dir": config.log_dir, "export_dir": config.export_dir}
    )
    return shards


def train_and_export(
    config: TrainConfig, strategy, stop_requested=lambda: False, shards=None, attempt=None
) -> RunResult:
    """Trains on `shards` (train, eval; verified here if not given) and exports the best weights once.

    `attempt["trainer"]` is set to the Trainer, for the caller to see how far a failed attempt got.
    """
    train_shards, eval_shards = shards or verify_data(config)
    quality = functools.partial(decode_fit.epoch_quality, eval_shards, config.color_space)
    trainer = Trainer(config, strategy, train_shards, eval_shards, stop_requested, quality)
    if attempt is not None:
        attempt["trainer"] = trainer
    logging.info(
        "%d training / %d validation examples; global batch %d (%d per replica x %d); %d steps/epoch",
        train_shards.num_examples,
        eval_shards.num_examples,
        trainer.global_batch,
        config.batch_size,
        strategy.num_replicas_in_sync,
        trainer.steps_per_epoch,
    )
    fit = trainer.fit()
    folder = trainer.checkpoints.directory
    if fit.preempted:
        return RunResult(fit, folder)
    # Only a run that was finished before this attempt may have been exported: every worker knows that
    # from the same checkpoint. Looking after training instead races the chief's own export.
    if fit.already_finished:
        with storage_errors(f"export to {config.export_dir}", ConfigError):
            done = previous_export(config.export_dir, config.model_dir, fit.step)
        if done:
            logging.info(
                "this run was already exported at step %d as %s: not exporting again", fit.step, done
            )
            return RunResult(fit, folder, done)
    # Every worker takes part in saving (variables may need collectives to read); only the chief's
    # copy lands in export_dir, so a run has exactly one export.
    chief = strategy.extended.should_checkpoint
    export_dir = checkpoints.worker_dir(config.export_dir, chief, prefix="colorizer-worker-export-")
    decode = fit_decode(config, trainer)
    metadata = {
        **{name: getattr(config, name) for name in checkpoints.ARCHITECTURE_FLAGS},
        "model_dir": config.model_dir,
        "step": fit.step,
        "best_val_loss": fit.best_val_loss,
        "init_from": config.init_from or None,
        "train_data": config.train_data,
        "eval_data": config.eval_data,
    }
    with storage_errors(f"export to {config.export_dir}", ConfigError):
        path = export_saved_model(
            trainer.model, config.color_space, export_dir, metadata, config.max_pixels, decode
        )
    if not chief:
        shutil.rmtree(export_dir, ignore_errors=True)
    # No worker finishes before the chief's export has landed: a finished index is complete for good
    # and leaves the headless Service's DNS, so a chief restarted now would wait for it forever.
    distribute.barrier(strategy)
    return RunResult(fit, folder, path if chief else None)


def fit_decode(config: TrainConfig, trainer: Trainer) -> preprocess.DecodeSettings:
    """The serving decode for the best weights, fitted on the validation split (the same on every worker)."""
    if not config.fit_decode:
        return preprocess.DecodeSettings()
    decode, scores = decode_fit.fit_decode(
        trainer.model, trainer.eval_shards, config.color_space, config.loss, config.colour_target
    )
    if scores:
        logging.info(
            "decode fitted on the validation split: a*b* x%.1f, classification-head blend %.2f "
            "(PSNR %.2f dB, colourfulness %.0f%% of the truth's, hue-family recall %.0f%%)",
            decode.chroma_scale,
            decode.blend,
            scores["psnr"],
            100 * scores["colourfulness"] / max(scores["truth_colourfulness"], 1e-6),
            100 * decode_fit.hue_recall(scores),
        )
    return decode


def previous_export(export_dir: str, model_dir: str, step: int):
    """The version folder an earlier attempt of this run exported at `step`, or None."""
    for path in complete_versions(export_dir):
        metadata = storage.read_json(os.path.join(path, METADATA_FILE)) or {}
        if metadata.get("model_dir") == model_dir and metadata.get("step") == step:
            return path
    return None


# What a failed collective raises. With peers, they mean a peer died or stopped answering; alone,
# only storage (a file system) can raise them: errors.storage_errors names the path where it can.
PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
)


_PEER_LOST_LINE = re.compile("aborted|timed out|nccl", re.IGNORECASE)  # the line that names the cause


def _lost_peer(exc: Exception, strategy, trained: bool) -> bool:
    """With peers: a failed collective, or, once a step ran in this attempt (so NCCL's setup
    works), NCCL reporting a broken connection as an InternalError."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return isinstance(exc, PEER_ERRORS) or (trained and "nccl" in str(getattr(exc, "message", "")).lower())


def train_and_export_guarded(config: TrainConfig, strategy, stop_requested, shards=None) -> RunResult:
    """train_and_export(); a lost peer exits EXIT_PEER_LOST, unavailable storage is a TransientError."""
    attempt: dict = {}
    try:
        return train_and_export(config, strategy, stop_requested, shards, attempt)
    except PEER_ERRORS + (tf.errors.InternalError,) as exc:
        trainer = attempt.get("trainer")
        if _lost_peer(exc, strategy, trainer is not None and trainer.steps_run > 0):
            reason = next(
                (line for line in exc.message.splitlines() if _PEER_LOST_LINE.search(line)),
                type(exc).__name__,
            )
            print(
                f"error: lost a peer worker ({reason.strip()}); a restart resumes from the last checkpoint",
                file=sys.stderr,
            )
            sys.exit(EXIT_PEER_LOST)
        if isinstance(exc, (tf.errors.CancelledError, tf.errors.InternalError)):
            raise
        raise TransientError(
            f"storage unavailable ({type(exc).__name__}: {first_line(exc.message)}); "
            "a restart resumes from the last checkpoint"
        ) from None
