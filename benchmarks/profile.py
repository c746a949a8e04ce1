"""`python benchmarks/profile.py`: TensorFlow profiler traces of the full input pipeline and of one
`serving_default` batch, summarised as the ops that took the most time (from the trace's XPlane).

The raw traces stay in --logdir for TensorBoard's Profile tab.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from benchmarks import common, pipeline, serving
from trainer.train.models import build_model

# Events that enclose others (function calls, iterator steps): counting them would double-count.
_CONTAINERS = {"Process", "Run", "IteratorGetNext", "PartitionedCall", "StatefulPartitionedCall", "While"}


def top_ops(logdir: str, count: int) -> list:
    """(op type, share of leaf-op time) of the host's TF ops, summed over all threads."""
    space = xplane_pb2.XSpace()
    with open(max(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)), "rb") as handle:
        space.ParseFromString(handle.read())
    totals = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {i: m.name for i, m in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                op = name.split(":")[-1].strip()
                if (
                    ":" in name
                    and not name.startswith(("Iterator", "$"))
                    and op not in _CONTAINERS
                    and not op.startswith("__inference")
                ):
                    totals[op] += event.duration_ps
    whole = sum(totals.values()) or 1
    return [(name, ps / whole) for name, ps in totals.most_common(count)]


def trace(fn, logdir: str):
    fn()
    tf.profiler.experimental.start(logdir)
    fn()
    tf.profiler.experimental.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default=tempfile.mkdtemp(prefix="colorizer-profile-"))
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        photos = args.data_dir or common.write_synthetic_photos(os.path.join(scratch, "photos"), 128)
        shards = pipeline.make_shards(photos, scratch, "png", 4)
        pull = pipeline.puller(pipeline.full_pipeline(shards, 32), 10)
        trace(pull, os.path.join(args.logdir, "pipeline"))
        model = build_model("unet", 2)
        files = serving.encoded_photos(serving.load_photos(photos, 16))
        with tempfile.TemporaryDirectory() as export_dir:
            loaded = tf.saved_model.load(serving.export_saved_model(model, "lab", export_dir))
            request = tf.constant(files)
            trace(
                lambda: loaded.signatures["serving_default"](image_bytes=request),
                os.path.join(args.logdir, "serving"),
            )
    for name in ("pipeline", "serving"):
        print(f"{name}: top ops by time ({args.logdir}/{name})")
        for op, share in top_ops(os.path.join(args.logdir, name), 12):
            print(f"  {share:6.1%}  {op}")


if __name__ == "__main__":
    main()
