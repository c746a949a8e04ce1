import importlib.util
import json
import os

import numpy as np
from PIL import Image

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "quality_table", os.path.join(REPO, "scripts", "quality_table.py")
)
quality_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality_table)


def _metrics(psnr, ssim, colourfulness, hue=None):
    values = {"psnr": psnr, "ssim": ssim, "colourfulness": colourfulness, "delta_e_2000": 5.0}
    return values if hue is None else {**values, "hue_agreement": hue}


def _report(folder, model):
    os.makedirs(folder)
    section = {"images": 2, "truth_colourfulness": 50.0, "model": model, "gray": _metrics(20.0, 0.9, 0.0)}
    with open(os.path.join(folder, "metrics.json"), "w") as handle:
        json.dump({"report_version": 3, "skipped": [], "120": section, "full": section}, handle)
    Image.fromarray(np.zeros((16 + 10 * 120, 360, 3), np.uint8)).save(
        os.path.join(folder, "contact_sheet.png")
    )
    return str(folder)


def test_goals_name_what_misses_against_the_reference():
    reference = _metrics(22.0, 0.92, 20.0)
    assert quality_table.goals(_metrics(22.0, 0.911, 35.0), reference, 50.0) == "met"
    assert (
        quality_table.goals(_metrics(21.5, 0.8, 10.0), reference, 50.0)
        == "misses: PSNR -0.50 dB, SSIM -0.120, colourfulness 20% < 60%"
    )


def test_curve_comes_from_the_runs_tensorboard_events(tmp_path):
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step, (loss, psnr, share) in zip(
            (5, 10, 15), ((0.5, 22.0, 0.4), (0.4, 22.5, 0.5), (0.45, 22.4, 0.55))
        ):
            tf.summary.scalar("loss", loss, step=step)
            tf.summary.scalar("psnr", psnr, step=step)
            tf.summary.scalar("colourfulness_share", share, step=step)
            tf.summary.image("grid", tf.zeros([1, 4, 4, 3]), step=step)
    writer.close()
    curve = quality_table.read_curve(str(tmp_path))
    assert [step for step, _ in curve] == [5, 10, 15]
    lines = quality_table.curve_table(curve).splitlines()
    assert lines[2] == "| 1 | 5 | 0.5000 | 22.00 | 40% |" and lines[4] == "| 3 | 15 | 0.4500 | 22.40 | 55% |"


def test_writes_table_sheet_and_notes(tmp_path):
    seed = _report(tmp_path / "seed", _metrics(13.0, 0.4, 10.0))
    best = _report(tmp_path / "best", _metrics(22.0, 0.91, 35.0, hue=0.4))
    (tmp_path / "notes.md").write_text("## Experiments\n")
    out, sheet = tmp_path / "QUALITY.md", tmp_path / "sheet.png"
    quality_table.main(
        [
            f"seed={seed}",
            f"best={best}",
            f"--output={out}",
            f"--sheet={sheet}",
            "--wall_seconds=600",
            f"--notes={tmp_path / 'notes.md'}",
            "--reference=seed",
        ]
    )
    text = out.read_text()
    assert "| gray input returned as is | 20.00 | 0.900 | 0.0 (0%)" in text
    assert "| seed | 13.00 | 0.400 | 10.0 (20%) | 5.00 | - |" in text  # a report from before the metric
    assert (
        "| best | 22.00 | 0.910 | 35.0 (70%) | 5.00 | 40% |" in text
        and "| met |" in text
        and "| reference |" in text
    )
    assert (
        "10.0 min" in text
        and "![gray | model | truth](sheet.png)" in text
        and text.endswith("## Experiments\n")
    )
    assert Image.open(sheet).size == (360, 16 + 8 * 120)


def test_missing_reports_are_skipped(tmp_path):
    seed = _report(tmp_path / "seed", _metrics(13.0, 0.4, 10.0))
    out = tmp_path / "QUALITY.md"
    quality_table.main(
        [f"seed={seed}", f"best={tmp_path / 'none'}", f"--output={out}", f"--sheet={tmp_path / 's.png'}"]
    )
    assert "| seed |" in out.read_text() and "| best |" not in out.read_text()


def test_a_mean_row_averages_the_seeds_that_exist_and_is_judged_by_the_goals(tmp_path):
    seed = _report(tmp_path / "seed", _metrics(21.0, 0.9, 10.0))
    runs = [
        _report(tmp_path / f"s{i}", _metrics(psnr, 0.9, colour, hue=hue))
        for i, (psnr, colour, hue) in enumerate(((22.0, 30.0, 0.5), (23.0, 32.0, 0.6), (21.5, 31.0, 0.7)))
    ]
    out = tmp_path / "QUALITY.md"
    spread = ",".join([*runs, str(tmp_path / "not-run")])
    quality_table.main(
        [f"seed={seed}", f"best={runs[0]}", f"--mean_of=best={spread}", f"--output={out}", "--reference=seed"]
    )
    text = out.read_text()
    assert "| best, mean of 3 runs | 22.17 | 0.900 | 31.0 (62%) | 5.00 | 60% |" in text
    lonely = tmp_path / "lonely.md"
    quality_table.main([f"seed={seed}", f"--mean_of=best={runs[0]}", f"--output={lonely}"])
    assert "mean of" not in lonely.read_text(), "one run is not a mean"
