"""What runs after each epoch, around the loop (as Orbit's actions do): early stopping with the best
checkpoint, TensorBoard summaries (scalars and a gray | predicted | truth grid) and the log line. The
Trainer owns the steps; these decide what an epoch's numbers mean and where they go.
"""

import dataclasses
import os
import time
from typing import Callable

import tensorflow as tf
from absl import logging


@dataclasses.dataclass(frozen=True)
class EpochEnd:
    """What one epoch produced."""

    epoch: int  # epochs done, this one included
    epochs: int
    step: int
    loss: float
    val_loss: float
    images_per_s: float
    eta_seconds: float  # for all --epochs; early stopping may end the run sooner
    peak_memory_bytes: dict = dataclasses.field(default_factory=dict)  # per GPU; empty on CPU


class EarlyStopping:
    """Keeps the best validation loss (and saves its checkpoint); stop once `patience` epochs miss it.

    Its two variables live in the run's checkpoint, so a restart continues the count.
    """

    def __init__(
        self, best_val_loss: tf.Variable, bad_epochs: tf.Variable, patience: int, save_best: Callable
    ):
        self.best_val_loss, self.bad_epochs, self.patience = best_val_loss, bad_epochs, patience
        self.save_best = save_best

    def exhausted(self) -> bool:
        return self.patience > 0 and int(self.bad_epochs.numpy()) >= self.patience

    def __call__(self, end: EpochEnd) -> bool:
        """Records the epoch's validation loss; True when patience is exhausted."""
        if end.val_loss < float(self.best_val_loss.numpy()):
            self.best_val_loss.assign(end.val_loss)
            self.bad_epochs.assign(0)
            self.save_best(end.step)
            return False
        self.bad_epochs.assign_add(1)
        return self.exhausted()


def log_epoch(end: EpochEnd, quality: dict, stopped: bool) -> None:
    """One line per epoch: losses, the pictures' PSNR and colourfulness when scored, speed, ETA."""
    ending = " early stop" if stopped else f"; ETA {duration(end.eta_seconds)}" if end.eta_seconds > 0 else ""
    scored = (
        f" val_psnr {quality['psnr']:.2f} dB colourfulness {quality['colourfulness_share'] * 100:.0f}% "
        f"of the truth's, green {_percent(quality.get('green_recall'))} blue "
        f"{_percent(quality.get('blue_recall'))}"
        if quality
        else ""
    )
    fields = {**dataclasses.asdict(end), "early_stopped": stopped}
    fields.update({f"val_{k}" if k == "psnr" else k: v for k, v in (quality or {}).items()})
    peaks = end.peak_memory_bytes.items()
    memory = "".join(f", peak {name} memory {peak / 1e9:.1f} GB" for name, peak in peaks)
    logging.info(
        "epoch %d/%d step %d loss %.4f val_loss %.4f%s (%.0f images/s%s)%s",
        end.epoch,
        end.epochs,
        end.step,
        end.loss,
        end.val_loss,
        scored,
        end.images_per_s,
        memory,
        ending,
        extra={"fields": fields},  # the JSON log's own keys (console.JsonFormatter)
    )


class StepProgress:
    """Inside an epoch, at most every `seconds`: a log line and a TensorBoard loss scalar with the
    step, images/s over the steps this attempt ran (a resumed epoch counts only those) and the epoch's ETA."""

    def __init__(self, seconds: float, global_batch: int, writers, clock=time.perf_counter):
        self.seconds, self.global_batch, self.writers, self.clock = seconds, global_batch, writers, clock
        self.epoch = self.epochs = self.first = self.end = 0
        self.start = self.last = 0.0

    def start_epoch(self, epoch: int, epochs: int, step: int, end: int) -> None:
        self.epoch, self.epochs, self.first, self.end = epoch, epochs, step, end
        self.start = self.last = self.clock()

    def __call__(self, step: int, loss: float) -> None:
        now = self.clock()
        if not self.seconds or now - self.last < self.seconds or step >= self.end:
            return
        self.last = now
        images_per_s = (step - self.first) * self.global_batch / max(now - self.start, 1e-9)
        eta = (self.end - step) * self.global_batch / max(images_per_s, 1e-9)
        fields = {"epoch": self.epoch + 1, "step": step, "loss": loss, "images_per_s": images_per_s}
        logging.info(
            "epoch %d/%d step %d/%d loss %.4f (%.0f images/s); epoch ETA %s",
            self.epoch + 1,
            self.epochs,
            step,
            self.end,
            loss,
            images_per_s,
            duration(eta),
            extra={"fields": {**fields, "epoch_eta_seconds": eta}},
        )
        with self.writers.train.as_default(step=step):
            tf.summary.scalar("loss_recent", loss)
            tf.summary.scalar("images_per_second", images_per_s)


class Profiler:
    """`--profile_steps=A,B`: a TensorBoard profile (the log dir's plugins/profile) of steps A to B."""

    def __init__(self, steps, log_dir: str, enabled: bool):
        self.steps, self.log_dir = steps if enabled else None, log_dir
        self.running = False

    def __call__(self, step: int) -> None:
        """Called before each training call and at the end: starts at A, stops at B."""
        if self.steps is None:
            return
        first, last = self.steps
        if not self.running and first <= step < last:
            tf.profiler.experimental.start(self.log_dir)
            self.running = True
        elif self.running and step >= last:
            self.stop(step)

    def stop(self, step: int) -> None:
        if self.running:
            tf.profiler.experimental.stop()
            self.running, self.steps = False, None
            logging.info("profile up to step %d written to %s/plugins/profile", step, self.log_dir)


def peak_memory(devices) -> dict:
    """{"GPU:0": peak bytes since the last call, ...} for each GPU, reset after reading; {} on CPU."""
    peaks = {}
    for device in devices:
        name = device.name.split("physical_device:")[-1]
        peaks[name] = tf.config.experimental.get_memory_info(name)["peak"]
        tf.config.experimental.reset_memory_stats(name)
    return peaks


def _percent(share) -> str:
    return "n/a" if share is None else f"{share * 100:.0f}%"


def duration(seconds: float) -> str:
    """'45 s', '12 min' or '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def image_grid(inputs: tf.Tensor, predicted: tf.Tensor, truth: tf.Tensor) -> tf.Tensor:
    """One image [1, rows*H, 3*W, 3]: each row is gray | predicted | truth of one example."""
    gray = tf.concat([inputs[..., :1]] * 3, axis=-1)
    rows = tf.concat([gray, tf.cast(predicted, tf.float32), tf.cast(truth, tf.float32)], axis=2)
    return tf.reshape(rows, [1, -1, rows.shape[2], 3])


class Writers:
    """Train and eval summary writers; no-ops on workers that must not write (non-chief)."""

    def __init__(self, log_dir: str, enabled: bool):
        if enabled:
            self.train = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
            self.eval = tf.summary.create_file_writer(os.path.join(log_dir, "eval"))
        else:
            self.train = self.eval = tf.summary.create_noop_writer()

    def epoch(
        self,
        step: int,
        loss: float,
        val_loss: float,
        images_per_s: float,
        grid: tf.Tensor,
        quality: dict,
        peak_memory: dict = None,
    ) -> None:
        """One epoch's scalars; `quality`: validation `psnr` and `colourfulness_share` (of the truth's)."""
        with self.train.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("images_per_second", images_per_s)
            for name, peak in (peak_memory or {}).items():
                tf.summary.scalar(f"peak_memory_gb/{name}", peak / 1e9)
        with self.eval.as_default(step=step):
            tf.summary.scalar("loss", val_loss)
            for name, value in quality.items():
                if value is not None:  # a hue family the validation pictures don't have
                    tf.summary.scalar(name, value)
            tf.summary.image("gray_predicted_truth", grid)
        self.train.flush()
        self.eval.flush()
