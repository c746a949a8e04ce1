"""`trainer.evaluate`: the report layout other tools read, the contact sheet, and the CLI."""

import json
import os

import pytest
from PIL import Image

from tests import forkserver
from tests.conftest import write_photos
from tests.forkserver import ENV
from trainer.errors import DataError
from trainer.serve import evaluate, export, metrics, preprocess
from trainer.train.models import build_model

SECTION_KEYS = {"images", "truth_colourfulness", "model", "gray"}


@pytest.fixture(scope="module")
def saved_model(tiny_export):
    return tiny_export


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, 3)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    return str(folder)


def _check_section(section, images):
    assert set(section) == SECTION_KEYS and section["images"] == images
    for who in ("model", "gray"):
        assert set(section[who]) == set(metrics.METRICS)
    assert section["gray"]["colourfulness"] == 0.0  # the baseline is the gray input itself
    assert section["truth_colourfulness"] > 0


def test_image_dir_report_has_both_resolutions_and_a_contact_sheet(saved_model, photos, tmp_path):
    report = evaluate.evaluate(saved_model, str(tmp_path / "r"), image_dir=photos, batch_size=2)
    assert json.loads((tmp_path / "r" / evaluate.REPORT_FILE).read_text()) == report
    assert report["report_version"] == evaluate.REPORT_VERSION and report["data"] is None
    assert report["model_metadata"]["color_space"] == "lab" and report["skipped"][0].startswith("broken.jpg")
    _check_section(report["120"], 3)
    _check_section(report["full"], 3)
    sheet = Image.open(tmp_path / "r" / report["contact_sheet"])
    assert sheet.size == (3 * 120, 16 + 3 * 120)


def test_shard_report_has_no_full_section_and_honours_limit(saved_model, shards_dir, tmp_path):
    report = evaluate.evaluate(
        saved_model, str(tmp_path / "r"), data=f"{shards_dir}/train-*", limit=5, batch_size=2, sheet_rows=4
    )
    _check_section(report["120"], 5)
    assert report["full"] is None and report["data"].endswith("train-*")
    assert Image.open(tmp_path / "r" / evaluate.SHEET_FILE).size == (360, 16 + 4 * 120)


def test_gray_baseline_scores_perfectly_on_gray_photos(saved_model, tmp_path):
    folder = tmp_path / "gray"
    folder.mkdir()
    for name in write_photos(tmp_path, 2):
        Image.open(tmp_path / name).convert("L").convert("RGB").save(folder / name)
    report = evaluate.evaluate(saved_model, str(tmp_path / "r"), image_dir=str(folder))
    gray = report["120"]["gray"]
    assert gray["psnr"] > 45 and gray["ssim"] > 0.99 and gray["delta_e_2000"] < 1.0
    assert report["120"]["truth_colourfulness"] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_dir": "/nonexistent/photos"}, "no such folder"),
        ({"data": "/nonexistent/val-*"}, "no files match"),
    ],
)
def test_missing_data_is_a_data_error(saved_model, tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        evaluate.evaluate(saved_model, str(tmp_path / "r"), **kwargs)


def test_missing_saved_model_is_a_data_error(photos, tmp_path):
    with pytest.raises(DataError, match=f"no SavedModel at {tmp_path}/none"):
        evaluate.evaluate(f"{tmp_path}/none", str(tmp_path / "r"), image_dir=photos)
    assert not os.path.exists(tmp_path / "r")


def _cli(*args):
    return forkserver.run("trainer.evaluate", args, ENV, timeout=300)


@pytest.mark.system
def test_cli_writes_report_and_prints_summary(saved_model, photos, tmp_path):
    run = _cli(
        f"--image_dir={photos}", f"--saved_model={saved_model}", f"--report_dir={tmp_path}/r", "--limit=2"
    )
    assert run.returncode == 0, run.stderr
    assert "120 model" in run.stdout and "full gray" in run.stdout
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["120"]["images"] == report["full"]["images"] == 2


@pytest.mark.system
def test_cli_flag_error_is_one_line_exit_2(tmp_path):
    both = _cli("--data=x", "--image_dir=y", "--saved_model=m", f"--report_dir={tmp_path}")
    assert (
        both.returncode == 2 and "error: pass exactly one of --data=PATTERN or --image_dir=DIR" in both.stderr
    )
    assert "Traceback" not in both.stderr


def test_oversized_photos_are_skipped_and_named(tmp_path):
    from tests.hostile_requests import png_bomb

    model = build_model("unet", preprocess.output_channels("lab"), base_filters=4)
    small_limit = export.export_saved_model(model, "lab", str(tmp_path / "export"), max_pixels=60 * 50)
    write_photos(tmp_path / "photos", 2)  # 64 x 48 = 3072 pixels: above this export's limit
    Image.new("RGB", (40, 30)).save(tmp_path / "photos" / "small.png")
    (tmp_path / "photos" / "bomb.png").write_bytes(png_bomb(15000, 12000))
    report = evaluate.evaluate(small_limit, str(tmp_path / "r"), image_dir=str(tmp_path / "photos"))
    assert report["120"]["images"] == 3 and report["full"]["images"] == 1
    assert report["model_metadata"]["max_pixels"] == 3000
    skipped = sorted(report["skipped"])
    assert skipped[0].startswith("bomb.png: ") and "decompression bomb" in skipped[0]
    assert skipped[1] == "photo000.png: full resolution: 64x48 pixels, above the export's limit of 3000"
