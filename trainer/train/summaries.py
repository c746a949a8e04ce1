"""TensorBoard output: per-epoch scalars and an image grid (gray | predicted | truth)."""

import os

import tensorflow as tf


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
        self, step: int, loss: float, val_loss: float, images_per_s: float, grid: tf.Tensor, quality: dict
    ) -> None:
        """One epoch's scalars; `quality`: validation `psnr` and `colourfulness_share` (of the truth's)."""
        with self.train.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("images_per_second", images_per_s)
        with self.eval.as_default(step=step):
            tf.summary.scalar("loss", val_loss)
            for name, value in quality.items():
                tf.summary.scalar(name, value)
            tf.summary.image("gray_predicted_truth", grid)
        self.train.flush()
        self.eval.flush()
