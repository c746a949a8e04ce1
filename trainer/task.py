"""`python -m trainer.task`: train a colorizer and export it for TF Serving.

With no flags it trains on the sample bundled with the package and writes under ./runs/colorizer/.
Only this module reads flags and the environment; everything else takes a TrainConfig.
"""

import os
import sys

from absl import app, flags, logging

from trainer import distribute
from trainer.config import TrainConfig
from trainer.errors import ColorizerError, ConfigError
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
flags.DEFINE_integer("base_filters", 32, "Filters of the U-Net's first level (doubled at each level).")
flags.DEFINE_integer("epochs", 10, "Epochs (passes over the training split).")
flags.DEFINE_integer("batch_size", 32, "Batch size PER REPLICA; the global batch is this times the replicas.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (the seed's 1e-3).")
flags.DEFINE_integer("patience", 3, "Early stopping: epochs without validation improvement (0: off).")
flags.DEFINE_bool("augment", True, "Random left-right flips of training pairs.")
flags.DEFINE_integer("checkpoint_every_steps", 0, "Also checkpoint every N steps (0: at epoch ends only).")
flags.DEFINE_bool("mixed_precision", False, "float16 compute with loss scaling (GPUs with tensor cores).")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES,
                  "auto: MultiWorkerMirrored when TF_CONFIG or an Indexed Job names peers, else Mirrored.")
flags.DEFINE_integer("peer_timeout_seconds", 600, "How long to wait for every peer's DNS name to resolve.")
flags.DEFINE_integer("collective_timeout_seconds", 300,
                     "A worker fails when a peer stops answering for this long, instead of hanging.")
flags.DEFINE_integer("seed", None, "Random seed for shuffling.")


def config_from_flags(environ=os.environ) -> TrainConfig:
    """Flags win; Vertex AI's AIP_* variables fill what flags leave unset."""
    model_dir = FLAGS.model_dir or environ.get("AIP_CHECKPOINT_DIR") or os.path.join(DEFAULT_RUN_DIR, "model")
    return TrainConfig(
        train_data=FLAGS.train_data, eval_data=FLAGS.eval_data, model_dir=model_dir,
        export_dir=FLAGS.export_dir or environ.get("AIP_MODEL_DIR") or os.path.join(DEFAULT_RUN_DIR, "export"),
        log_dir=FLAGS.tensorboard_dir or environ.get("AIP_TENSORBOARD_LOG_DIR") or "",
        model=FLAGS.model, color_space=FLAGS.color_space, base_filters=FLAGS.base_filters, epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, patience=FLAGS.patience,
        augment=FLAGS.augment, checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        mixed_precision=FLAGS.mixed_precision, jit_compile=FLAGS.jit_compile, seed=FLAGS.seed)


def run(config: TrainConfig, strategy) -> dict:
    """Verifies the data, trains, and (on the chief) exports; returns what happened."""
    # Imported here so `--help` and flag errors answer without loading TensorFlow's graph code.
    from trainer.export import export_saved_model
    from trainer.input_pipeline import find_shards
    from trainer.train import Trainer

    train_shards, eval_shards = find_shards(config.train_data), find_shards(config.eval_data)
    trainer = Trainer(config, strategy, train_shards, eval_shards)
    logging.info("%d training / %d validation examples; global batch %d (%d per replica x %d); %d steps/epoch",
                 train_shards.num_examples, eval_shards.num_examples, trainer.global_batch, config.batch_size,
                 strategy.num_replicas_in_sync, trainer.steps_per_epoch)
    result = trainer.fit()
    if strategy.extended.should_checkpoint:
        result["export"] = export_saved_model(
            trainer.model, config.color_space, config.export_dir,
            {"model": config.model, "step": result["step"], "best_val_loss": result["best_val_loss"]})
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    try:
        config = config_from_flags()
        result = run(config, distribute.build_strategy(FLAGS.strategy))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ColorizerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"trained {result['epoch']} epoch(s), {result['step']} steps, best val_loss {result['best_val_loss']:.5f}")
    print(f"checkpoints: {config.model_dir}")
    print(f"tensorboard: tensorboard --logdir {config.log_dir or os.path.join(config.model_dir, 'logs')}")
    if "export" in result:
        print(f"SavedModel:  {result['export']}")


def run_cli():
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run_cli()
