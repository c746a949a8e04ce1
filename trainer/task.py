"""`python -m trainer.task`: train a colorizer and export it for TF Serving.

With no flags it trains on the sample bundled with the package and writes under ./runs/colorizer/.
Only this module reads flags and the environment; everything else takes a TrainConfig.
"""

import os
import shutil
import sys
import tempfile

import tensorflow as tf
from absl import app, flags, logging

from trainer import checkpoints, distribute, outputs, preemption
from trainer.config import LR_SCHEDULES, PRECISIONS, TrainConfig
from trainer.errors import (EXIT_PEER_LOST, EXIT_PREEMPTED, ConfigError, TransientError, exit_on_user_error,
                            first_line, parse_flags_or_exit, storage_errors)
from trainer.images import DEFAULT_MAX_PIXELS
from trainer.losses import LOSSES
from trainer.models import MODELS
from trainer.preprocess import COLOR_SPACES

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")
DEFAULT_RUN_DIR = os.path.join("runs", "colorizer")

FLAGS = flags.FLAGS
flags.DEFINE_string("train_data", os.path.join(SAMPLE_DIR, "train-*.tfrecord"), "Glob of training shards.")
flags.DEFINE_string("eval_data", os.path.join(SAMPLE_DIR, "validation-*.tfrecord"), "Glob of validation shards.")
flags.DEFINE_string("model_dir", None, "Checkpoints and logs [$AIP_CHECKPOINT_DIR or ./runs/colorizer/model].")
flags.DEFINE_string("export_dir", None, "SavedModel versions [$AIP_MODEL_DIR or ./runs/colorizer/export].")
flags.DEFINE_string("tensorboard_dir", None, "TensorBoard logs [$AIP_TENSORBOARD_LOG_DIR or {model_dir}/logs].")
flags.DEFINE_enum("model", "unet", MODELS, "autoencoder: the seed's model; unet: skip connections.")
flags.DEFINE_enum("color_space", "lab", COLOR_SPACES, "rgb: predict RGB (the seed); lab: predict a*b*, keep L*.")
flags.DEFINE_enum("loss", "two_heads", LOSSES, "two_heads: a*b* bins and regression (lab; the default); mse, l1, "
                  "huber on the targets; classification over a*b* bins (lab).")
flags.DEFINE_integer("base_filters", 32, "Filters of the U-Net's first level (doubled at each level).")
flags.DEFINE_bool("sync_batchnorm", False, "U-Net batch statistics over the global batch, not each replica's.")
flags.DEFINE_integer("epochs", 10, "Epochs (passes over the training split).")
flags.DEFINE_integer("batch_size", 32, "Batch size PER REPLICA; the global batch is this times the replicas.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (the seed's 1e-3).")
flags.DEFINE_enum("lr_schedule", "constant", LR_SCHEDULES, "constant, or cosine: a warmup epoch, then decay to 0.")
flags.DEFINE_integer("patience", 3, "Early stopping: epochs without validation improvement (0: off).")
flags.DEFINE_bool("augment", True, "Random left-right flips of training pairs.")
flags.DEFINE_integer("checkpoint_every_steps", 0, "Also checkpoint every N steps (0: at epoch ends only).")
flags.DEFINE_enum("precision", "float32", PRECISIONS,
                  "mixed_float16: float16 compute with loss scaling (V100/T4-class tensor cores); mixed_bfloat16: "
                  "bfloat16 compute, no loss scaling (A100/H100). Colour conversions stay float32.")
flags.DEFINE_bool("mixed_precision", False, "Alias of --precision=mixed_float16.")
flags.DEFINE_bool("fit_decode", True, "After training, fit the a*b* scale (and two heads' blend) on --eval_data "
                  "and export it with the model (trainer/decode_fit.py).")
flags.DEFINE_float("colour_target", 0.6, "Decode fit: reach this share of the truth's colourfulness on --eval_data, "
                   "at the least PSNR, within 0.5 dB of the most accurate setting (0: accuracy only).")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES,
                  "auto: MultiWorkerMirrored when TF_CONFIG or an Indexed Job names peers, else Mirrored.")
flags.DEFINE_integer("peer_timeout_seconds", 600, "How long to wait for every peer's DNS name to resolve.")
flags.DEFINE_integer("collective_timeout_seconds", 0,
                     "Debugging only: fail a collective after this long (0: never; TF starts a thread per "
                     "collective for the whole timeout). A dead peer is detected without it.")
flags.DEFINE_integer("seed", None, "Random seed of shuffles and flips (unset: a different run each time).")
flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS,
                     "Serving refuses images with more pixels (read from their headers), before decoding them.")


def _precision() -> str:
    """--precision, or mixed_float16 when the older --mixed_precision is set (the manifests pass it)."""
    if not FLAGS.mixed_precision:
        return FLAGS.precision
    if FLAGS.precision not in ("float32", "mixed_float16"):
        raise ConfigError(f"--mixed_precision means --precision=mixed_float16, not --precision={FLAGS.precision}: "
                          "pass one of them")
    return "mixed_float16"


def config_from_flags(environ=os.environ) -> TrainConfig:
    """Flags win; Vertex AI's AIP_* variables fill what flags leave unset."""
    model_dir = FLAGS.model_dir or environ.get("AIP_CHECKPOINT_DIR") or os.path.join(DEFAULT_RUN_DIR, "model")
    return TrainConfig(
        train_data=FLAGS.train_data, eval_data=FLAGS.eval_data, model_dir=model_dir,
        export_dir=FLAGS.export_dir or environ.get("AIP_MODEL_DIR") or os.path.join(DEFAULT_RUN_DIR, "export"),
        log_dir=FLAGS.tensorboard_dir or environ.get("AIP_TENSORBOARD_LOG_DIR") or "",
        model=FLAGS.model, color_space=FLAGS.color_space, loss=FLAGS.loss, base_filters=FLAGS.base_filters,
        sync_batchnorm=FLAGS.sync_batchnorm, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, lr_schedule=FLAGS.lr_schedule, patience=FLAGS.patience,
        augment=FLAGS.augment, checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        precision=_precision(), jit_compile=FLAGS.jit_compile, fit_decode=FLAGS.fit_decode,
        colour_target=FLAGS.colour_target, seed=FLAGS.seed,
        max_pixels=FLAGS.max_pixels)


def run(config: TrainConfig, strategy, stop_requested=lambda: False, shards=None) -> dict:
    """Trains on `shards` (train, eval; verified here if not given) and exports; returns what happened."""
    from trainer.export import export_saved_model
    from trainer.train import Trainer

    train_shards, eval_shards = shards or verify_data(config)
    trainer = Trainer(config, strategy, train_shards, eval_shards, stop_requested)
    logging.info("%d training / %d validation examples; global batch %d (%d per replica x %d); %d steps/epoch",
                 train_shards.num_examples, eval_shards.num_examples, trainer.global_batch, config.batch_size,
                 strategy.num_replicas_in_sync, trainer.steps_per_epoch)
    result = trainer.fit()
    if result["preempted"]:
        return result
    # Only a run that was finished before this attempt may have been exported: every worker knows that
    # from the same checkpoint. Looking after training instead races the chief's own export.
    done = None
    if result["already_finished"]:
        with storage_errors(f"export to {config.export_dir}", ConfigError):
            done = previous_export(config.export_dir, config.model_dir, result["step"])
    if done:
        logging.info("this run was already exported at step %d as %s: not exporting again", result["step"], done)
        return {**result, "export": done, "checkpoints": trainer.manager.directory}
    # Every worker takes part in saving (variables may need collectives to read); only the chief's
    # copy lands in export_dir, so a run has exactly one export.
    chief = strategy.extended.should_checkpoint
    export_dir = config.export_dir if chief else tempfile.mkdtemp(prefix="colorizer-worker-export-")
    decode = _fit_decode(config, trainer)
    metadata = {"model": config.model, "model_dir": config.model_dir, "step": result["step"],
                "best_val_loss": result["best_val_loss"]}
    with storage_errors(f"export to {config.export_dir}", ConfigError):
        path = export_saved_model(trainer.model, config.color_space, export_dir, metadata, config.max_pixels, decode)
    if chief:
        result["export"] = path
    else:
        shutil.rmtree(export_dir, ignore_errors=True)
    result["checkpoints"] = trainer.manager.directory
    return result


def _fit_decode(config: TrainConfig, trainer):
    """The serving decode for the best weights, fitted on the validation split (same on every worker)."""
    from trainer import decode_fit, preprocess

    if not config.fit_decode:
        return preprocess.DecodeSettings()
    decode, scores = decode_fit.fit_decode(trainer.model, trainer.eval_shards, config.color_space, config.loss,
                                           config.colour_target)
    if scores:
        logging.info("decode fitted on the validation split: a*b* x%.1f, classification-head blend %.2f "
                     "(PSNR %.2f dB, colourfulness %.0f%% of the truth's)", decode.chroma_scale, decode.blend,
                     scores["psnr"], 100 * scores["colourfulness"] / max(scores["truth_colourfulness"], 1e-6))
    return decode


def previous_export(export_dir: str, model_dir: str, step: int):
    """The version folder an earlier attempt of this run exported at `step`, or None."""
    from trainer.export import METADATA_FILE

    versions = [n.rstrip("/") for n in tf.io.gfile.listdir(export_dir)] if tf.io.gfile.isdir(export_dir) else []
    for version in sorted((v for v in versions if v.isdigit()), key=int, reverse=True):
        path = os.path.join(export_dir, version, METADATA_FILE)
        metadata = outputs.read_json(path) or {}
        complete = tf.io.gfile.exists(os.path.join(export_dir, version, "saved_model.pb"))  # uploaded last
        if complete and metadata.get("model_dir") == model_dir and metadata.get("step") == step:
            return os.path.join(export_dir, version)
    return None


# What a failed collective raises. With peers, they mean a peer died or stopped answering; alone,
# only storage (a file system) can raise them: errors.storage_errors names the path where it can.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError)


def _train(config, strategy, stop_requested, shards=None) -> dict:
    """run(), with a lost peer exiting EXIT_PEER_LOST and unavailable storage a TransientError."""
    try:
        return run(config, strategy, stop_requested, shards)
    except PEER_ERRORS as exc:
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            reason = next((line for line in exc.message.splitlines() if "aborted" in line or "timed out" in line),
                          type(exc).__name__)
            print(f"error: lost a peer worker ({reason.strip()}); a restart resumes from the last checkpoint",
                  file=sys.stderr)
            sys.exit(EXIT_PEER_LOST)
        if isinstance(exc, tf.errors.CancelledError):
            raise
        raise TransientError(f"storage unavailable ({type(exc).__name__}: {first_line(exc.message)}); "
                             "a restart resumes from the last checkpoint") from None


def verify_data(config: TrainConfig) -> tuple:
    """The training and validation shards, checked against their manifests."""
    from trainer.input_pipeline import find_shards

    return find_shards(config.train_data), find_shards(config.eval_data)


def check_before_training(config: TrainConfig) -> tuple:
    """On every worker, before peers or model: data complete, outputs writable, model_dir's run the same.

    Returns the verified shards. Nothing is created when the data is bad.
    """
    shards = verify_data(config)
    outputs.check_outputs({"model_dir": config.model_dir,
                           "tensorboard_dir": config.log_dir or os.path.join(config.model_dir, "logs"),
                           "export_dir": config.export_dir})
    with storage_errors(f"--model_dir={config.model_dir}", ConfigError):
        checkpoints.check_identity(config.model_dir, config, write=False)
    return shards


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    sigterm = preemption.SigtermWatch()
    sigterm.install()  # TF replaces it while building a multi-worker strategy: re-installed below
    with exit_on_user_error():
        config = config_from_flags()
        shards = check_before_training(config)
        strategy = distribute.build_strategy(FLAGS.strategy, dict(os.environ), FLAGS.peer_timeout_seconds,
                                             FLAGS.collective_timeout_seconds, sigterm.requested)
        sigterm.reinstall(strategy)
        result = _train(config, strategy, sigterm.requested, shards)
    if result["preempted"]:
        print(f"stopped by SIGTERM at step {result['step']}; checkpoint saved in {config.model_dir}; "
              f"exit {EXIT_PREEMPTED}: a restart resumes from it")
        preemption.exit_now(EXIT_PREEMPTED)
    print(f"trained {result['epoch']} epoch(s), {result['step']} steps, best val_loss {result['best_val_loss']:.5f}")
    print(f"checkpoints: {result['checkpoints']}")
    if "export" in result:
        print(f"tensorboard: tensorboard --logdir {config.log_dir or os.path.join(config.model_dir, 'logs')}")
        print(f"SavedModel:  {result['export']}")


def run_cli():
    """Console-script entry point."""
    app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
    run_cli()
