"""The starter model: the scripts that make it (curve, publish) and the model shipped in the package."""

import importlib.util
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import forkserver
from tests.conftest import REPO, make_photo
from trainer.serve import export, metrics, preprocess
from trainer.train.models import build_model


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_START = "] 388 training / 44 validation examples; global batch 32 (32 per replica x 1); 12 steps/epoch"
_EPOCH = (
    "] epoch {} step {} loss 7.0 val_loss {} val_psnr {} dB colourfulness {} of the truth's, "
    "green {} blue {} (8 images/s); ETA 1.6 h"
)
LOG = "\n".join(
    [
        "I1205 02:43:54.000000 1 r.py:6" + _START,
        "I1205 02:45:24.000000 1 a.py:6" + _EPOCH.format("1/100", 12, 6.8321, 20.83, "45%", "33%", "6%"),
        "I1205 02:46:54.000000 1 a.py:6" + _EPOCH.format("2/100", 24, 6.3276, 22.74, "42%", "10%", "0%"),
        "I1205 09:00:00.000000 1 r.py:6" + _START,  # resumed hours later
        "I1205 09:02:24.000000 1 a.py:6" + _EPOCH.format("3/100", 36, 6.2612, 22.40, "33%", "n/a", "0%"),
    ]
)


def test_the_curve_counts_training_time_only_across_resumed_attempts():
    curve = _script("starter_curve")
    rows = curve.curve(LOG.splitlines())
    assert [r[0] for r in rows] == [1, 2, 3] and rows[2][5:7] == ("n/a", "0%")
    assert rows[-1][-1] == pytest.approx(5.4 / 60)  # 1.5 + 1.5 min, then 2.4 min after the restart
    table = curve.table(rows, every=5, cores=2)
    assert table.splitlines()[2].startswith("| 1 | 12 | 6.8321 | 20.83 | 45% | 33% | 6% |")
    assert table.splitlines()[-1].endswith("| 0.09 | 0.2 |"), table


def test_publish_copies_a_scored_export_with_its_training_story_and_refuses_another(tmp_path):
    model = build_model("unet", preprocess.output_channels("lab", "two_heads"), base_filters=4)
    trained = {"model": "unet", "step": 36, "best_val_loss": 6.2612}  # LOG's epoch 3
    version = export.export_saved_model(model, "lab", str(tmp_path / "export"), trained)
    means = {name: 0.5 for name in ("psnr", "ssim", "colourfulness", *metrics.FAMILY_RECALLS)}
    section = {"images": 2, "truth_colourfulness": 30.0, "model": means}
    report = {"saved_model": version, "full": section, "120": section}
    (tmp_path / "metrics.json").write_text(json.dumps(report))
    (tmp_path / "train.log").write_text(LOG)
    command = ["scripts/publish_starter.py", f"--export={tmp_path}/export"]
    command += [f"--report={tmp_path}/metrics.json", f"--train_log={tmp_path}/train.log"]
    run = forkserver.run(None, [*command, f"--output={tmp_path}/starter"], forkserver.ENV)
    assert run.returncode == 0, run.stderr
    metadata = json.loads((tmp_path / "starter" / export.METADATA_FILE).read_text())
    starter = metadata["starter"]
    assert (starter["epochs"], starter["exported_epoch"]) == (3, 3)
    assert "provided for research use" in starter["trained_on"]
    assert metadata["starter"]["cbsd68"]["green_recall"] == 0.5
    assert tf.saved_model.load(str(tmp_path / "starter")).signatures["serving_default"] is not None
    report["saved_model"] = str(tmp_path / "other")
    (tmp_path / "metrics.json").write_text(json.dumps(report))
    refused = forkserver.run(None, [*command, f"--output={tmp_path}/starter"], forkserver.ENV)
    assert refused.returncode == 2 and "metrics.json scores" in refused.stderr


def _packaged():
    if not os.path.exists(os.path.join(export.STARTER_DIR, "saved_model.pb")):
        pytest.fail(f"{export.STARTER_DIR} is missing: scripts/train_starter.sh with PUBLISH=1 makes it")
    return export.STARTER_DIR


def test_the_packaged_starter_is_a_complete_export_within_the_wheels_budget():
    folder = _packaged()
    size = sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(folder) for n in names)
    assert size <= 20e6, f"{size / 1e6:.1f} MB"
    assert os.path.exists(os.path.join(folder, "assets.extra", "tf_serving_warmup_requests"))
    metadata = json.loads(open(os.path.join(folder, export.METADATA_FILE)).read())
    assert metadata["model"] == "unet" and metadata["loss"] == "two_heads" and metadata["init_from"] is None
    trained_on = metadata["starter"]["trained_on"]
    assert "BSDS500" in trained_on and "research use" in trained_on
    loaded = tf.saved_model.load(folder)
    assert set(loaded.signatures) == {"serving_default", "colorize_tensor"}


def test_the_starter_colours_a_photo_and_is_found_by_name(tmp_path, monkeypatch):
    loaded = tf.saved_model.load(_packaged())
    photo = np.stack([make_photo(i, size=(120, 120)) for i in range(4)])
    gray = tf.image.rgb_to_grayscale(tf.constant(photo, tf.float32) / 255.0)
    rgb = loaded.signatures["colorize_tensor"](gray=gray)["rgb"].numpy()
    assert metrics.colourfulness((rgb * 255).astype(np.uint8)).mean() > 5  # a gray answer scores 0
    monkeypatch.chdir(tmp_path)
    assert export.resolve_saved_model("starter") == export.STARTER_DIR
    (tmp_path / "starter").mkdir()  # a path of that name wins
    with pytest.raises(export.DataError, match="no SavedModel at starter"):
        export.resolve_saved_model("starter")


@pytest.mark.system
def test_a_newcomer_colorizes_a_photo_with_the_starter_before_training_anything(tmp_path):
    Image.fromarray(make_photo(9, size=(160, 100))).save(tmp_path / "holiday.jpg")
    run = forkserver.run(
        "trainer.client",
        ["--local_model=starter", "--output_dir=out", "holiday.jpg"],
        forkserver.ENV,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    with Image.open(io.BytesIO((tmp_path / "out" / "holiday.png").read_bytes())) as png:
        assert png.size == (160, 100)
