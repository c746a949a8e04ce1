"""Model builders: the seed's autoencoder (the baseline) and a U-Net with skip connections."""

from typing import Optional

import keras
from keras import layers

from trainer.data.schema import IMAGE_SIZE
from trainer.train.config import MODELS

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
# The U-Net's moving batch statistics (used at evaluation and serving) follow training faster than
# Keras' 0.99: with 0.99 a short run (130 steps for 10 epochs of 432 photos) still serves with
# near-initial statistics and predicts saturated nonsense at evaluation.
UNET_BN_MOMENTUM = 0.9


def _output_activation(output_channels: int):
    # RGB targets lie in [0, 1]; a*b* / 128 targets in [-1, 1]; more channels are bin logits.
    if output_channels > 3:
        return None
    return "sigmoid" if output_channels == 3 else "tanh"


def build_autoencoder(output_channels: int = 3) -> keras.Model:
    """The seed notebook's model, layer for layer: `Sequential([Encoder, Decoder])`.

    Encoder: Conv2D 64 -> 128 -> 256 -> 512 (3x3, ReLU, BatchNorm), MaxPool after the first three
    (120 -> 60 -> 30 -> 15). Decoder: Conv2DTranspose 256 -> 128 -> 64 with stride 2
    (15 -> 30 -> 60 -> 120), a final 3-filter layer and a Reshape to (120, 120, 3).
    """
    encoder = keras.Sequential(name="Encoder")
    encoder.add(keras.Input(shape=INPUT_SHAPE))
    for filters in (64, 128, 256, 512):
        encoder.add(layers.Conv2D(filters, 3, padding="same", activation="relu"))
        encoder.add(layers.BatchNormalization())
        if filters != 512:
            encoder.add(layers.MaxPooling2D(2))
    decoder = keras.Sequential(name="Decoder")
    decoder.add(keras.Input(shape=encoder.output_shape[1:]))
    for filters in (256, 128, 64):
        decoder.add(layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu"))
    decoder.add(
        layers.Conv2D(output_channels, 3, padding="same", activation=_output_activation(output_channels))
    )
    decoder.add(layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, output_channels)))
    return keras.Sequential([encoder, decoder], name="AutoEncoder")


def _conv_block(x, filters: int, name: str, sync_batchnorm: bool = False):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(
            momentum=UNET_BN_MOMENTUM, synchronized=sync_batchnorm, name=f"{name}_bn{i}"
        )(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def _global_fusion(x, filters: int):
    """Iizuka et al. (2016)'s fusion: an image-level vector (pooled, then dense) joined to every
    bottleneck position, so each pixel's colour can depend on what the whole photo shows."""
    pooled = layers.GlobalAveragePooling2D(name="global_pool")(x)
    vector = layers.Dense(filters, activation="relu", name="global_dense")(pooled)
    # [N, H, W, 1] x [N, 1, 1, F]: the vector at every position, whatever H and W are.
    tiled = keras.ops.ones_like(x[..., :1]) * layers.Reshape((1, 1, filters), name="global_tile")(vector)
    x = layers.Concatenate(name="global_concat")([x, tiled])
    return layers.Conv2D(filters, 1, activation="relu", name="global_fuse")(x)


def build_unet(
    output_channels: int = 2,
    base_filters: int = 32,
    depth: int = 3,
    sync_batchnorm: bool = False,
    global_prior: bool = False,
    image_size: Optional[int] = IMAGE_SIZE,
) -> keras.Model:
    """U-Net: `depth` poolings (120 -> 60 -> 30 -> 15), skips joining encoder and decoder levels.

    The skips carry edges past the bottleneck, which the seed's autoencoder loses in its poolings.
    `sync_batchnorm` computes batch statistics over the global batch rather than each replica's;
    `global_prior` adds `_global_fusion` at the bottleneck. `image_size=None` leaves height and
    width free (any multiple of 2**depth): the weights don't depend on them.
    """
    if image_size is not None and image_size % (2**depth):
        raise ValueError(f"depth {depth} does not divide image size {image_size}")
    inputs = keras.Input(shape=(image_size, image_size, 3), name="gray")
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, f"down{level}", sync_batchnorm)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, base_filters * 2**depth, "bottleneck", sync_batchnorm)
    if global_prior:
        x = _global_fusion(x, base_filters * 2**depth)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, f"dec{level}", sync_batchnorm)
    outputs = layers.Conv2D(
        output_channels, 1, activation=_output_activation(output_channels), dtype="float32", name="chroma"
    )(x)
    return keras.Model(inputs, outputs, name="UNet")


def build_model(
    name: str,
    output_channels: int,
    base_filters: int = 32,
    sync_batchnorm: bool = False,
    image_size: Optional[int] = IMAGE_SIZE,
) -> keras.Model:
    """Builds a model by name; `base_filters` sizes the U-Net (the autoencoder is fixed by the seed).

    `image_size=None` gives a U-Net with free height and width (see `build_unet`).
    """
    if name == "autoencoder":
        if image_size != IMAGE_SIZE:
            raise ValueError(f"the autoencoder takes {IMAGE_SIZE}x{IMAGE_SIZE} inputs only")
        return build_autoencoder(output_channels)
    if name in ("unet", "unet_global"):
        return build_unet(
            output_channels,
            base_filters,
            sync_batchnorm=sync_batchnorm,
            global_prior=name == "unet_global",
            image_size=image_size,
        )
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
