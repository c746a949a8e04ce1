import keras
import numpy as np
import pytest

from trainer.train.models import build_autoencoder, build_model, build_unet


def _layer_summary(model):
    return [
        (type(layer).__name__, getattr(layer, "filters", None), getattr(layer, "strides", None))
        for layer in model.layers
    ]


def test_autoencoder_is_the_seed_model():
    model = build_autoencoder()
    assert [m.name for m in model.layers] == ["Encoder", "Decoder"]
    encoder, decoder = model.layers
    assert model.input_shape == (None, 120, 120, 3) and model.output_shape == (None, 120, 120, 3)
    assert _layer_summary(encoder) == [
        ("Conv2D", 64, (1, 1)),
        ("BatchNormalization", None, None),
        ("MaxPooling2D", None, (2, 2)),
        ("Conv2D", 128, (1, 1)),
        ("BatchNormalization", None, None),
        ("MaxPooling2D", None, (2, 2)),
        ("Conv2D", 256, (1, 1)),
        ("BatchNormalization", None, None),
        ("MaxPooling2D", None, (2, 2)),
        ("Conv2D", 512, (1, 1)),
        ("BatchNormalization", None, None),
    ]
    assert all(
        layer.kernel_size == (3, 3) and layer.activation.__name__ == "relu"
        for layer in encoder.layers
        if isinstance(layer, keras.layers.Conv2D)
    )
    assert encoder.output_shape == (None, 15, 15, 512)
    assert _layer_summary(decoder) == [
        ("Conv2DTranspose", 256, (2, 2)),
        ("Conv2DTranspose", 128, (2, 2)),
        ("Conv2DTranspose", 64, (2, 2)),
        ("Conv2D", 3, (1, 1)),
        ("Reshape", None, None),
    ]
    assert [layer.output.shape[1] for layer in decoder.layers[:3]] == [30, 60, 120]


@pytest.mark.parametrize("channels", [2, 3])
def test_output_shapes_and_ranges(channels):
    x = np.random.default_rng(0).uniform(0, 1, (2, 120, 120, 3)).astype("float32")
    for model in (build_model("autoencoder", channels), build_model("unet", channels, base_filters=4)):
        y = np.asarray(model(x, training=False))
        assert y.shape == (2, 120, 120, channels)
        low = 0.0 if channels == 3 else -1.0
        assert y.min() >= low and y.max() <= 1.0


def test_unet_has_skip_connections_at_every_level():
    model = build_unet(2, base_filters=4, depth=3)
    skips = [layer for layer in model.layers if isinstance(layer, keras.layers.Concatenate)]
    assert sorted(s.output.shape[1] for s in skips) == [30, 60, 120]


def test_unknown_model_or_a_free_size_autoencoder_is_an_error():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", 2)
    with pytest.raises(ValueError, match="120x120 inputs only"):
        build_model("autoencoder", 3, image_size=None)


def test_global_prior_lets_every_pixel_see_the_whole_photo():
    """Free height and width (any multiple of 8) keep the weights; only the global vector carries
    a far corner's content to the opposite corner, beyond the convolutions' reach."""
    image = np.random.default_rng(0).uniform(size=(1, 240, 240, 3)).astype("float32")
    changed = image.copy()
    changed[:, -40:, -40:] = 1.0 - changed[:, -40:, -40:]
    for global_prior in (False, True):
        name = "unet_global" if global_prior else "unet"
        fixed = build_model(name, 2, base_filters=4)
        free = build_model(name, 2, base_filters=4, image_size=None)
        free.set_weights(fixed.get_weights())
        np.testing.assert_allclose(free(image[:, :120, :120]), fixed(image[:, :120, :120]), atol=1e-6)
        assert free(image[:, :160, :200]).shape == (1, 160, 200, 2)
        corner = np.abs(free(changed)[0, :40, :40] - free(image)[0, :40, :40]).max()
        assert (corner > 0) == global_prior, (global_prior, corner)  # without it: exactly unchanged
