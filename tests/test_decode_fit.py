import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.data.input_pipeline import find_shards
from trainer.serve import export, metrics, preprocess
from trainer.serve.preprocess import DecodeSettings
from trainer.train import decode_fit
from trainer.train.models import build_model


def _scores(*rows):
    """(scale, blend, psnr, colourfulness[, hue recall]) rows with a truth colourfulness of 100."""
    return {
        DecodeSettings(s, b): {
            "psnr": p,
            "colourfulness": c,
            "truth_colourfulness": 100.0,
            **{name: rest[0] if rest else 0.5 for name in metrics.FAMILY_RECALLS},
        }
        for s, b, p, c, *rest in rows
    }


def test_choose_takes_the_most_accurate_setting_that_reaches_the_colour_target():
    scores = _scores((1.0, 0.0, 23.2, 45), (1.3, 0.0, 23.0, 61), (1.4, 0.25, 23.03, 60), (1.4, 0.0, 22.8, 65))
    assert decode_fit.choose(scores, colour_target=0.6) == DecodeSettings(1.4, 0.25)
    assert decode_fit.choose(scores, colour_target=0.0) == DecodeSettings(1.0, 0.0)  # accuracy only


def test_choose_pays_psnr_for_colour_in_the_right_hue_family_only():
    rows = [(1.0, 0.0, 23.2, 45, 0.30), (1.3, 0.0, 23.0, 61, 0.40), (1.4, 0.25, 22.9, 66, 0.41)]
    assert decode_fit.choose(_scores(*rows), colour_target=0.6) == DecodeSettings(1.3, 0.0)
    rows[2] = (1.4, 0.25, 22.9, 66, 0.45)  # 5 points more recall: worth 0.1 dB
    assert decode_fit.choose(_scores(*rows), colour_target=0.6) == DecodeSettings(1.4, 0.25)
    assert decode_fit.choose(_scores(*rows), colour_target=0.0) == DecodeSettings(1.0, 0.0)
    assert decode_fit.hue_recall({"warm_recall": 0.6, "green_recall": 0.2, "blue_recall": None}) == 0.4


def test_choose_falls_back_to_the_most_colourful_within_the_psnr_budget():
    scores = _scores((1.0, 0.0, 23.0, 35), (1.2, 0.0, 22.9, 42), (1.4, 0.0, 22.4, 70))
    assert decode_fit.choose(scores, colour_target=0.6, psnr_budget_db=0.5) == DecodeSettings(1.2, 0.0)
    assert decode_fit.choose(scores, colour_target=0.6, psnr_budget_db=0.7) == DecodeSettings(1.4, 0.0)


def test_candidates_depend_on_what_the_model_predicts():
    assert decode_fit.candidates("rgb", "mse") == [DecodeSettings()]
    assert {s.blend for s in decode_fit.candidates("lab", "mse")} == {0.0}
    two_heads = decode_fit.candidates("lab", "two_heads")
    assert len(two_heads) == len(decode_fit.CHROMA_SCALES) * len(decode_fit.BLENDS)


def test_scores_rise_in_colour_with_the_chroma_scale(shards_dir):
    keras.utils.set_random_seed(0)  # an untrained model: some initialisations predict no colour at all
    model = build_model("unet", preprocess.output_channels("lab", "two_heads"), base_filters=4)
    settings = [DecodeSettings(1.0, 0.0), DecodeSettings(1.4, 0.0), DecodeSettings(1.0, 0.25)]
    batches = decode_fit.validation_batches(find_shards(os.path.join(shards_dir, "validation-*")))
    scores = decode_fit.score(model, batches, "lab", settings)
    low, high, blended = (scores[s] for s in settings)
    assert low["truth_colourfulness"] > 10  # the synthetic photos are colourful
    assert high["colourfulness"] > low["colourfulness"] > 0
    assert blended["colourfulness"] != low["colourfulness"]
    assert all(np.isfinite(s["psnr"]) for s in scores.values())


def test_fitted_decode_is_exported_in_both_signatures_and_the_metadata(shards_dir, tmp_path):
    model = build_model("unet", preprocess.output_channels("lab", "two_heads"), base_filters=4)
    decode, scores = decode_fit.fit_decode(
        model, find_shards(os.path.join(shards_dir, "validation-*")), "lab", "two_heads"
    )
    assert decode in decode_fit.candidates("lab", "two_heads") and set(scores) == {
        "psnr",
        "colourfulness",
        "truth_colourfulness",
        "warm_recall",
        "green_recall",
        "blue_recall",
    }
    vivid = DecodeSettings(1.4, 0.25)
    path = export.export_saved_model(model, "lab", str(tmp_path), decode=vivid)
    assert json.load(open(os.path.join(path, export.METADATA_FILE)))["decode"] == {
        "chroma_scale": 1.4,
        "blend": 0.25,
    }
    gray = tf.random.uniform([2, 120, 120, 1], seed=3)
    served = tf.saved_model.load(path).signatures["colorize_tensor"](gray=gray)["rgb"]
    prediction = model(preprocess.model_inputs(gray), training=False)
    expected = preprocess.predictions_to_rgb(prediction, gray, "lab", vivid)
    np.testing.assert_allclose(served.numpy(), expected.numpy(), atol=1e-5)
    assert not np.allclose(
        expected.numpy(), preprocess.predictions_to_rgb(prediction, gray, "lab").numpy(), atol=1e-3
    )


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_chroma_scale_multiplies_the_predicted_ab(scale):
    prediction = tf.random.uniform([1, 8, 8, 2], -0.1, 0.1, seed=4)
    gray = tf.random.uniform([1, 8, 8, 1], 0.3, 0.7, seed=5)
    scaled = preprocess.predictions_to_rgb(prediction, gray, "lab", DecodeSettings(scale, 0.0))
    np.testing.assert_allclose(
        scaled.numpy(), preprocess.predictions_to_rgb(prediction * scale, gray, "lab").numpy(), atol=1e-6
    )
