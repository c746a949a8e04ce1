import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from trainer.serve import preprocess

_spec = importlib.util.spec_from_file_location(
    "tint_baseline", os.path.join(REPO, "scripts", "tint_baseline.py")
)
tint_baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tint_baseline)


def _photo(path, rgb):
    Image.fromarray(np.broadcast_to(np.array(rgb, np.uint8), (12, 16, 3)).copy()).save(path)
    return str(path)


def test_the_tint_is_the_photos_mean_colour_and_scores_as_a_picture(tmp_path):
    orange, blue = _photo(tmp_path / "a.png", (220, 140, 60)), _photo(tmp_path / "b.png", (60, 110, 200))
    lab = [
        preprocess.rgb_to_lab(np.array(c, np.float32) / 255).numpy() for c in ((220, 140, 60), (60, 110, 200))
    ]
    np.testing.assert_allclose(
        tint_baseline.mean_ab([orange, blue]), (lab[0][1:] + lab[1][1:]) / 2, atol=0.05
    )
    # Tinted with the orange photo's own a*b*, the orange photo comes back (up to gray's L* vs its L*).
    report = tint_baseline.tint_report([orange, orange], lab[0][1:])
    for section in ("120", "full"):
        scores, truth = report[section]["model"], report[section]["truth_colourfulness"]
        assert scores["hue_agreement"] == pytest.approx(1.0) and scores["colourfulness"] > 0.5 * truth
        assert report[section]["gray"]["hue_agreement"] == 0.0 and report[section]["images"] == 2
    # The same tint on the blue photo: colourful, but every hue wrong.
    assert tint_baseline.tint_report([blue], lab[0][1:])["full"]["model"]["hue_agreement"] == pytest.approx(
        0.0
    )
