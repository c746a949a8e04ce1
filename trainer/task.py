"""`python -m trainer.task`: train a colorizer and export it for TF Serving.

With no flags it trains on the sample bundled with the package and writes under ./runs/colorizer/.
Only this module reads flags and the environment; everything else takes a TrainConfig. Flags come
from the config's fields (`trainer.train.config.define_flags`). TensorFlow is imported only in `main`,
after the flags say how quiet its start-up should be.
"""

import os

from absl import app, flags

from trainer import console
from trainer.errors import EXIT_PREEMPTED, exit_on_user_error, parse_flags_or_exit
from trainer.train import config as config_lib

FLAGS = flags.FLAGS
config_lib.define_flags(FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    if console.wants_quiet(FLAGS["verbosity"].present, os.environ):
        console.quiet_tensorflow(os.environ)
    from trainer.train import (
        distribute,
        preemption,
        run,  # TensorFlow from here on
    )

    sigterm = preemption.SigtermWatch()
    sigterm.install()  # TF replaces it while building a multi-worker strategy: re-installed below
    with exit_on_user_error():
        config, cluster = config_lib.config_from_flags(FLAGS, os.environ)
        if cluster.log_format == "json":
            console.use_json_logs()
        shards = run.check_before_training(config)
        strategy = distribute.build_strategy(
            cluster.strategy,
            dict(os.environ),
            cluster.peer_timeout_seconds,
            cluster.collective_timeout_seconds,
            sigterm.requested,
        )
        sigterm.reinstall(strategy)
        result = run.train_and_export_guarded(config, strategy, sigterm.requested, shards)
    fit = result.fit
    if fit.preempted:
        print(
            f"stopped by SIGTERM at step {fit.step}; checkpoint saved in {config.model_dir}; "
            f"exit {EXIT_PREEMPTED}: a restart resumes from it"
        )
        preemption.exit_now(EXIT_PREEMPTED)
    print(f"trained {fit.epoch} epoch(s), {fit.step} steps, best val_loss {fit.best_val_loss:.5f}")
    print(f"checkpoints: {result.checkpoints}")
    if result.export:
        print(f"SavedModel:  {result.export}")
        print(f"tensorboard: tensorboard --logdir {config.log_dir}")
        print(
            f"colorize:    python -m trainer.client --local_model={result.export} PHOTO.jpg "
            "--output_dir=colorized"
        )


def run_cli():
    """Console-script entry point."""
    app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
    run_cli()
