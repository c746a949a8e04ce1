"""`python benchmarks/run.py [--quick] --output=results.json`: input pipeline, training loop and
serving throughput on this machine, as medians of interleaved repeated runs.

Photos come from --data_dir (e.g. a folder of real JPEGs) or are generated synthetically, so the
script runs anywhere. --quick uses tiny data and models: a smoke run, not a measurement.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common, pipeline, serving, training
from trainer.train.models import build_model

FULL = dict(
    photos=512,
    photo_size=(320, 240),
    shards=8,
    pipeline_batch=32,
    pipeline_batches=64,
    repeats=3,
    scaling=tuple(pipeline.SCALING),
    models=("unet", "autoencoder"),
    train_batch=16,
    base_filters=32,
    train_steps=2,
    train_repeats=3,
    peak_size=2048,
    serving_batches=(1, 16, 64),
    serving_calls=32,
    latency_calls=100,
    encodings="png,raw",
)
QUICK = dict(
    photos=16,
    photo_size=(64, 48),
    shards=2,
    pipeline_batch=4,
    pipeline_batches=4,
    repeats=2,
    scaling=("threads1_np1_cycle1", "autotune_cycle8"),
    models=("unet",),
    train_batch=4,
    base_filters=4,
    train_steps=1,
    train_repeats=2,
    peak_size=256,
    serving_batches=(1, 16),
    serving_calls=16,
    latency_calls=5,
    encodings="png",
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="results.json", help="Where the results JSON is written.")
    parser.add_argument("--quick", action="store_true", help="Tiny data and models (smoke test, seconds).")
    parser.add_argument("--data_dir", default=None, help="Folder of photos; default: synthetic photos.")
    parser.add_argument(
        "--encodings",
        default=None,
        help="trainer.prepare encodings, the first being the default (png); default: png,raw (--quick: png).",
    )
    parser.add_argument("--sections", default="pipeline,train,serving", help="Which sections to run.")
    parser.add_argument(
        "--max_load", type=float, default=1.5, help="Wait for the 1-minute load to drop below this."
    )
    parser.add_argument("--max_wait_s", type=float, default=0.0, help="How long to wait for a quiet machine.")
    return parser.parse_args(argv)


def photo_folder(args, preset, scratch: str) -> str:
    """--data_dir, or a folder of synthetic photos written into `scratch`."""
    if args.data_dir:
        return args.data_dir
    return common.write_synthetic_photos(
        os.path.join(scratch, "photos"), preset["photos"], preset["photo_size"]
    )


def flatten(results: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: the dotted keys the issue names, beside the nested tree."""
    flat = {}
    for key, value in results.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_sections(args, preset, photos: str, scratch: str) -> dict:
    """Runs the requested sections in order; each records the load average it saw."""
    sections, results = args.sections.split(","), {}
    encodings = (args.encodings or preset["encodings"]).split(",")
    if "pipeline" in sections:
        common.wait_for_quiet(args.max_load, args.max_wait_s)
        results["pipeline"] = pipeline.run(
            photos,
            encodings,
            preset["shards"],
            preset["pipeline_batch"],
            preset["pipeline_batches"],
            preset["repeats"],
            preset["scaling"],
        )
    if "train" in sections:
        common.wait_for_quiet(args.max_load, args.max_wait_s)
        shards = pipeline.make_shards(
            photos, os.path.join(scratch, "train-shards"), encodings[0], preset["shards"]
        )
        results["train"] = training.run(
            shards,
            preset["models"],
            preset["train_batch"],
            preset["base_filters"],
            preset["train_steps"],
            preset["train_repeats"],
            preset["peak_size"],
        )
        if "pipeline" in results:
            results["train"]["pipeline_over_loop"] = (
                results["pipeline"]["images_per_s"] / results["train"]["loop_images_per_s"]
            )
    if "serving" in sections:
        common.wait_for_quiet(args.max_load, args.max_wait_s)
        model = build_model("unet", 2, preset["base_filters"])
        results["serving"] = serving.run(
            model,
            "lab",
            serving.load_photos(photos, 32),
            preset["serving_batches"],
            preset["serving_calls"],
            preset["repeats"],
            preset["latency_calls"],
        )
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = QUICK if args.quick else FULL
    started = time.time()
    results = {
        "machine": common.machine_info(),
        "quick": args.quick,
        "data_dir": args.data_dir or "synthetic",
    }
    with tempfile.TemporaryDirectory(prefix="colorizer-bench-") as scratch:
        results.update(run_sections(args, preset, photo_folder(args, preset, scratch), scratch))
    results["machine"]["load_average_end"] = common.load_average()
    results["seconds"] = time.time() - started
    results["flat"] = flatten({k: v for k, v in results.items() if isinstance(v, dict)})
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
    print(
        json.dumps({k: v for k, v in results["flat"].items() if k.count(".") == 1}, indent=2, sort_keys=True)
    )
    return results


if __name__ == "__main__":
    main()
