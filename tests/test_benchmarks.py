"""Smoke test of benchmarks/run.py --quick: it runs end to end and writes every promised key.

Runs the script in its own process (its own TF runtime, no logical-device split from conftest) and
checks keys and signs only: numbers on a shared 2-core machine are not reproducible.
"""

import json

import pytest

from tests import forkserver

pytestmark = pytest.mark.system  # real processes, servers or a second TensorFlow (README: test tiers)

KEYS = (
    "pipeline.raw_mb_s",
    "pipeline.images_per_s",
    "pipeline.mb_s",
    "train.loop_images_per_s",
    "train.bare_step_images_per_s",
    "train.mfu",
    "serving.signature_images_per_s_b16",
    "serving.model_images_per_s_b16",
    "serving.p50_ms_b1",
    "serving.p99_ms_b1",
    "pipeline.decode_only_images_per_s",
    "pipeline.host_over_decode_only",
)


def test_quick_benchmark_writes_all_keys(tmp_path):
    output = tmp_path / "results.json"
    run = forkserver.run("benchmarks.run", ["--quick", f"--output={output}"], forkserver.ENV, tmp_path, 300)
    assert run.returncode == 0, run.stderr
    results = json.loads(output.read_text())
    flat = results["flat"]
    for key in KEYS:
        assert flat[key] > 0, key
    assert results["machine"]["cores"] >= 1 and results["machine"]["tf_version"]
    assert results["machine"]["cpu_model"] and results["machine"]["load_average_start"] >= 0
    assert flat["serving.p99_ms_b1"] >= flat["serving.p50_ms_b1"]
    assert flat["train.flops_per_image"] > 0
    assert (
        -1 < flat["train.device_preprocess_share"] < 1
    )  # quick models are tiny: the share is not meaningful


def test_serving_memory_stays_within_the_capacity_constants(tiny_export):
    """benchmarks/serving_memory.py measured in fresh processes on a 4-MP photo: the bytes per pixel the
    capacity formula (trainer.serve.limits.serving_memory_bytes) assumes are not understated."""
    from benchmarks.serving_memory import per_pixel
    from trainer.serve import limits

    measured = per_pixel(tiny_export, side=2000, batch=4)
    assert 10 < measured["composition_bytes_per_pixel"] <= limits.COMPOSITION_BYTES_PER_PIXEL, measured
    assert 0 < measured["retained_bytes_per_pixel"] <= limits.RETAINED_BYTES_PER_PIXEL, measured
    assert 0 < measured["idle_bytes"] <= limits.IDLE_BYTES, measured
