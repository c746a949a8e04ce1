"""Colorizer: train an image-colorization encoder/decoder with tf.distribute and export it for TF Serving."""

__version__ = "0.1.0"
