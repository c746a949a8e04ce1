"""The training loop: a custom `tf.distribute` loop, checkpointed, resumable, with early stopping.

Why not `model.fit`: Keras 3's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585),
while this loop over Keras layers and optimizer runs unchanged under MirroredStrategy (GPUs of one
node) and MultiWorkerMirroredStrategy (many nodes).
"""

import dataclasses
import functools
import math
import random
import time
from typing import Callable, Optional

import keras
import tensorflow as tf
from absl import logging

from trainer.data import input_pipeline
from trainer.errors import DivergedError
from trainer.serve import preprocess
from trainer.train import actions, checkpoints, distribute, losses, preemption, steps
from trainer.train.config import BIN_LOSSES, TrainConfig
from trainer.train.models import build_model


class _State:
    """Everything a restart needs besides weights and optimizer: epoch and early-stopping state."""

    def __init__(self):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_val_loss = tf.Variable(math.inf, dtype=tf.float32, trainable=False, name="best_val_loss")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")


_PRIOR_BATCHES = 64  # batches of training targets counted for the classification loss's bin prior


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What `Trainer.fit` did: where the run stands and why it returned."""

    step: int
    epoch: int
    best_val_loss: float
    preempted: bool  # a stop was agreed: a checkpoint is saved and a restart resumes from it
    already_finished: bool  # this attempt trained nothing: the run had ended before it started


class Trainer:
    """Owns the model, optimizer, datasets and checkpoints of one run."""

    def __init__(
        self,
        config: TrainConfig,
        strategy: tf.distribute.Strategy,
        train_shards,
        eval_shards,
        stop_requested=lambda: False,
        epoch_quality: Optional[Callable[[keras.Model], dict]] = None,
    ):
        """`epoch_quality(model)`: what the epoch's pictures look like, logged and summarised (optional)."""
        self.config, self.strategy = config, strategy
        self.num_workers = distribute.count_workers(strategy)
        self.pacer = preemption.Pacer(strategy, self.num_workers, stop_requested)
        self.train_shards, self.eval_shards = train_shards, eval_shards
        self.global_batch = config.batch_size * strategy.num_replicas_in_sync
        self.steps_per_epoch = max(1, train_shards.num_examples // self.global_batch)
        self.eval_steps = max(1, math.ceil(eval_shards.num_examples / self.global_batch))
        keras.mixed_precision.set_global_policy(config.precision)  # process-wide: set it either way
        # Flips are reproducible with --seed; without it each run draws its own.
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        with strategy.scope():
            channels = preprocess.output_channels(config.color_space, config.loss)
            self.model = build_model(config.model, channels, config.base_filters, config.sync_batchnorm)
            self.optimizer = steps.build_optimizer(config, self.steps_per_epoch)
            self.optimizer.build(self.model.trainable_variables)
            self.state = _State()
        checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.state.epoch,
            best_val_loss=self.state.best_val_loss,
            bad_epochs=self.state.bad_epochs,
        )
        self.checkpoints = checkpoints.RunCheckpoints(
            config, checkpoint, self.model, strategy.extended.should_checkpoint
        )
        self.writers = actions.Writers(config.log_dir, strategy.extended.should_save_summary)
        self.progress = actions.StepProgress(config.log_every_seconds, self.global_batch, self.writers)
        self.profiler = actions.Profiler(
            config.profile_range, config.log_dir, strategy.extended.should_save_summary
        )
        self.gpus = tf.config.list_physical_devices("GPU")
        self.early_stopping = actions.EarlyStopping(
            self.state.best_val_loss, self.state.bad_epochs, config.patience, self.checkpoints.save_best
        )
        self.epoch_quality = epoch_quality
        self.steps_run = 0  # in this attempt (a restart begins again at 0)

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def restore(self) -> int:
        """Restores the latest checkpoint, else --init_from's weights; returns the step to go on from."""
        latest = self.checkpoints.restore()
        if latest:
            logging.info(
                "resuming from step %d (epoch %d) of %s", self.step, int(self.state.epoch.numpy()), latest
            )
        elif self.config.init_from:
            source = checkpoints.load_initial_weights(self.model, self.config.init_from, self.config)
            logging.info("starting from the weights of %s (a fresh optimizer)", source)
        return self.step

    def _datasets(self):
        config = self.config

        def build(shards, training):
            return input_pipeline.build_dataset(
                shards,
                self.global_batch,
                training=training,
                shuffle_buffer=config.shuffle_buffer,
                seed=config.seed,
                num_workers=self.num_workers,
            )

        return build(self.train_shards, True), build(self.eval_shards, False)

    def _bin_weights(self):
        """Class-rebalancing weights for the classification loss, from the first training batches.

        Read in file order from the shards themselves (not the distributed dataset), so every worker
        computes the same weights.
        """
        if self.config.loss not in BIN_LOSSES:
            return None
        dataset = input_pipeline.build_dataset(self.train_shards, self.global_batch, training=False)
        targets = dataset.map(
            input_pipeline.no_autograph(
                lambda gray, color: preprocess.model_pair(gray, color, self.config.color_space)
            )
        )
        batches = min(_PRIOR_BATCHES, max(1, self.train_shards.num_examples // self.global_batch))
        return losses.rebalancing_weights(
            input_pipeline.guard_reads(lambda: losses.count_bins(targets, batches), self.train_shards)
        )

    def _step_functions(self):
        return steps.build_step_functions(
            self.config,
            self.model,
            self.optimizer,
            self.strategy,
            self.global_batch,
            self.seed,
            self._bin_weights(),
        )

    def fit(self) -> FitResult:
        """Trains until `epochs`, early stopping or a stop request; returns a summary of the run.

        On a stop request (SIGTERM) every worker saves a checkpoint and the summary says
        `preempted`, so the caller can exit with a retriable code and a restart resumes here.
        """
        self.restore()
        stopped = self.early_stopping.exhausted()
        if stopped or int(self.state.epoch.numpy()) >= self.config.epochs:  # the same on every worker
            logging.info(
                "this run already finished (epoch %d of %d%s); not training again: raise --epochs to "
                "continue it, or pass a new --model_dir for a new run",
                int(self.state.epoch.numpy()),
                self.config.epochs,
                ", early stopped" if stopped else "",
            )
            return self._finished(preempted=False, already_finished=True)
        train_ds, eval_ds = self._datasets()
        train_iter = iter(self.strategy.experimental_distribute_dataset(train_ds))
        eval_dist = self.strategy.experimental_distribute_dataset(eval_ds)
        preview = next(iter(eval_ds))
        run_train, run_eval = self._step_functions()
        preempted, run_start, first_epoch = False, time.perf_counter(), int(self.state.epoch.numpy())
        while not stopped and int(self.state.epoch.numpy()) < self.config.epochs:
            epoch, first_step = int(self.state.epoch.numpy()), self.step
            start = time.perf_counter()
            end = (epoch + 1) * self.steps_per_epoch
            self.progress.start_epoch(epoch, self.config.epochs, first_step, end)
            loss, preempted = self._run_epoch(run_train, train_iter, epoch)
            # The steps this attempt ran: a resumed epoch's first ones were run before the restart.
            images_per_s = (self.step - first_step) * self.global_batch / (time.perf_counter() - start)
            val_loss = None if preempted else self._evaluate(run_eval, eval_dist)
            if val_loss is None:  # a stop was agreed; a restart repeats this epoch's evaluation
                preempted = True
                break
            self._check_finite("validation loss", val_loss)
            # Early stopping may end the run sooner: the ETA is for all --epochs.
            eta = (
                (time.perf_counter() - run_start)
                / (epoch + 1 - first_epoch)
                * (self.config.epochs - epoch - 1)
            )
            stopped = self._end_epoch(loss, val_loss, images_per_s, preview, eta)
        if preempted:
            preemption.keep_until_exit(train_iter, eval_dist)
        return self._finished(preempted)

    def _end_epoch(
        self, loss: float, val_loss: float, images_per_s: float, preview, eta_seconds: float
    ) -> bool:
        """Counts the epoch, checkpoints it, runs the actions around it; True when early stopping ends it."""
        self.state.epoch.assign_add(1)
        end = actions.EpochEnd(
            int(self.state.epoch.numpy()),
            self.config.epochs,
            self.step,
            loss,
            val_loss,
            images_per_s,
            eta_seconds,
            actions.peak_memory(self.gpus),
        )
        stopped = self.early_stopping(end)
        self.checkpoints.save_latest(self.step)
        quality = self.epoch_quality(self.model) if self.epoch_quality else {}
        self.writers.epoch(
            self.step, loss, val_loss, images_per_s, self._grid(preview), quality, end.peak_memory_bytes
        )
        actions.log_epoch(end, quality, stopped)
        return stopped

    def _finished(self, preempted: bool, already_finished: bool = False) -> FitResult:
        """Saves where a stop left off, or restores the best weights for export; returns the summary.

        `already_finished`: this attempt trained nothing (the run had ended before it started).
        """
        self.profiler.stop(self.step)
        if preempted:
            self.checkpoints.save_latest(self.step)
            logging.warning(
                "stop requested: saved checkpoint at step %d; a restart resumes from it", self.step
            )
        else:
            self.checkpoints.restore_best()
        return FitResult(
            self.step,
            int(self.state.epoch.numpy()),
            float(self.state.best_val_loss.numpy()),
            preempted,
            already_finished,
        )

    def _run_epoch(self, run_train, train_iter, epoch: int):
        """Runs the rest of `epoch`; returns (mean loss, whether a stop was requested)."""
        losses, end = [], (epoch + 1) * self.steps_per_epoch
        while self.step < end:
            if self.pacer.stop_agreed():
                return 0.0, True
            steps = min(self.pacer.steps_per_call, end - self.step)
            interval = self.config.checkpoint_every_steps
            if interval:
                steps = min(steps, interval - self.step % interval)
            self.profiler(self.step)
            start = time.perf_counter()
            losses.append(
                (
                    float(
                        input_pipeline.guard_reads(
                            functools.partial(run_train, train_iter, steps), self.train_shards
                        )
                    ),
                    steps,
                )
            )
            self._check_finite("loss", losses[-1][0])
            self.steps_run += steps
            self.pacer.timed(steps, time.perf_counter() - start)
            self.progress(self.step, losses[-1][0])
            if interval:
                self.checkpoints.save_latest(self.step, force=False)
        return sum(loss * n for loss, n in losses) / max(1, sum(n for _, n in losses)), False

    def _check_finite(self, name: str, value: float) -> None:
        """Raises DivergedError before a NaN or infinite loss reaches a checkpoint or an export.

        Every worker sees the same all-reduced value, so all of them stop here together.
        """
        if not math.isfinite(value):
            raise DivergedError(
                f"training diverged: {name} is {value} at step {self.step}; nothing was exported "
                "(checkpoints from before it are kept): lower --learning_rate"
            )

    def _evaluate(self, run_eval, eval_dist):
        """Mean validation loss, in calls no longer than training's; None when a stop was agreed.

        One call over a large validation split could outlast a preemption's grace period.
        """
        iterator, total, done = iter(eval_dist), 0.0, 0
        while done < self.eval_steps:
            if self.pacer.stop_agreed():
                preemption.keep_until_exit(iterator)
                return None
            steps = min(self.pacer.steps_per_call, self.eval_steps - done)
            total += (
                float(
                    input_pipeline.guard_reads(functools.partial(run_eval, iterator, steps), self.eval_shards)
                )
                * steps
            )
            done += steps
        return total / done

    def _grid(self, batch):
        inputs, targets = preprocess.model_pair(batch[0][:4], batch[1][:4], self.config.color_space)
        gray = inputs[..., :1]
        predicted = preprocess.predictions_to_rgb(
            self.model(inputs, training=False), gray, self.config.color_space
        )
        truth = preprocess.predictions_to_rgb(targets, gray, self.config.color_space)
        return actions.image_grid(inputs, predicted, truth)
