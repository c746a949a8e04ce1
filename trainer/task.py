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
    json_logs = FLAGS.log_format == "json"
    if json_logs:  # first: every line after this one, TensorFlow's start-up included, is JSON
        console.json_logs_process()
        console.use_json_logs()
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
        console.report(
            f"stopped by SIGTERM at step {fit.step}; checkpoint saved in {config.model_dir}; "
            f"exit {EXIT_PREEMPTED}: a restart resumes from it",
            json_logs,
        )
        preemption.exit_now(EXIT_PREEMPTED)
    lines = [
        f"trained {fit.epoch} epoch(s), {fit.step} steps, best val_loss {fit.best_val_loss:.5f}",
        f"checkpoints: {result.checkpoints}",
    ]
    if result.export:
        lines += [
            f"SavedModel:  {result.export}",
            f"tensorboard: tensorboard --logdir {config.log_dir}",
            f"colorize:    python -m trainer.client --local_model={result.export} PHOTO.jpg "
            "--output_dir=colorized",
        ]
    for line in lines:
        console.report(line, json_logs)


def run_cli():
    """Console-script entry point."""
    app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
    run_cli()
