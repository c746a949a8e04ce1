"""`python -m trainer.prepare`: colour photos -> TFRecord shards and a manifest per split.

    python -m trainer.prepare --input_dir=photos/ --output_dir=data/ --split=train --num_shards=8 \\
        --holdout_fraction=0.1 --holdout_split=validation
    python -m trainer.prepare --input_dir=gs://BUCKET/photos/ --output_dir=gs://BUCKET/data \\
        --num_shards=256 --num_tasks=8 --task_index=3 --run_name=prep-1     # one of 8 tasks

Photos come from a local folder or a gs:// prefix (listed as a stream). With --num_tasks, each task
decodes its own 1/N of the photos (by name hash), writes its own range of the split's shards, and
the last task to finish writes the manifests (trainer/data/prepare_tasks.py). On Kubernetes the Indexed
Job k8s/components/prepare sets --task_index and --num_tasks through the environment.
"""

import functools
import itertools
import math
import os
import posixpath
import sys
import time
import zlib

from absl import app, flags

from trainer.data import gcs, images, photo_source, prepare_finalize, prepare_tasks, storage
from trainer.data.prepare_config import PrepareConfig, define_flags, from_flags
from trainer.data.prepare_stream import Progress, Scan, count_share, write_photos
from trainer.data.schema import Manifest, encode_example, manifest_path, shard_name
from trainer.data.shard_writer import ShardWriter, existing_split_files, publish_manifest
from trainer.errors import ConfigError, DataError, exit_on_user_error, parse_flags_or_exit

FLAGS = flags.FLAGS


def check_output_dir(output_dir: str) -> None:
    """Proves --output_dir writable the way shards are written, before a single photo is decoded."""
    if gcs.is_gcs(output_dir):
        gcs.check_writable(output_dir)
    else:
        storage.check_writable("output_dir", output_dir)


def assign_split(name: str, split: str, holdout_split: str, holdout_fraction: float) -> str:
    """Stable by file name, so re-running prepare on a grown folder keeps old photos where they were."""
    if holdout_fraction <= 0:
        return split
    return holdout_split if zlib.crc32(name.encode("utf-8")) / 2**32 < holdout_fraction else split


def _load(job):
    """(name, (gray, colour) or None, error or None) for one fetched job; bad files are errors, not raised."""
    name, color, gray, (encoding, size) = job
    try:
        if isinstance(color, Exception):
            raise color
        if isinstance(gray, str) and not gcs.is_gcs(gray) and not os.path.exists(gray):
            raise FileNotFoundError(f"no gray version {gray}")
        return name, images.load_pair(color, gray, size, encoding), None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow raises all three for bad files
        return name, None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def _load_chunk(jobs):
    """Runs in a decode process: downloads a chunk's gs:// photos, then decodes them one by one."""
    return [_load(job) for job in photo_source.fetch(jobs)]


def first_photos(scan: Scan, input_dir: str):
    """This task's photo names, after proving the listing holds at least one image (anyone's)."""
    names = iter(scan)
    first = next(names, None)
    if first is None and not scan.images:
        raise DataError(f"--input_dir={input_dir}: no image files ({', '.join(images.IMAGE_EXTENSIONS)})")
    return itertools.chain([] if first is None else [first], names)


def _decode_and_write(config: PrepareConfig, started: float, names, writer_for, label: str, refused: dict):
    """Decodes and writes `names`; a name in `refused` (Scan.refused) is skipped with its error."""

    def job_of(name):
        gray = config.gray_dir and storage.join(config.gray_dir, name)
        color = refused.pop(name, None) or storage.join(config.input_dir, name)
        return name, color, gray, (config.encoding, config.image_size)

    def split_of(name):
        return assign_split(name, config.split, config.holdout_split, config.holdout_fraction)

    counter = functools.partial(count_share, config.input_dir, config.recursive, *config.task)
    progress = Progress(label, counter, enabled=config.progress, start=started)
    return write_photos(
        names, job_of, split_of, writer_for, _load_chunk, config.workers, progress, encode_example
    )


def prepare(config: PrepareConfig) -> dict:
    """Writes the shards and manifests; returns {split: Manifest}. Raises ColorizerError for bad input.

    With `num_tasks` set this is task `task_index` of a run (trainer/data/prepare_tasks.py): it returns
    the manifests once every task's part is done (the last task to finish writes them), else {}.
    """
    started = time.monotonic()
    plan = None
    if config.num_tasks is not None:
        holdout = config.holdout_split if config.holdout_fraction else None
        plan = prepare_tasks.Plan.make(
            config.output_dir,
            config.num_tasks,
            config.task_index,
            config.run_name,
            config.split,
            holdout,
            config.num_shards,
            config.overwrite,
            config.identity(),
        )
        if plan.state == "complete":
            print(
                f"{plan.label}: {', '.join(plan.splits)} already complete (run {plan.run}); nothing to do",
                file=sys.stderr,
            )
            return {}
        if plan.state == "finalize":  # this task's part was done before it was restarted
            return prepare_finalize.finalize(plan, config.encoding, sys.stderr, config.image_size)
    scan = Scan(photo_source.PhotoSource(config.input_dir, config.recursive), *config.task, log=sys.stderr)
    names = first_photos(scan, config.input_dir)
    check_output_dir(config.output_dir)
    run = functools.partial(_decode_and_write, config, started, names)
    if plan is None:
        return _prepare_alone(config, scan, run)
    prepare_tasks.run(plan, scan, lambda writer_for: run(writer_for, plan.label, scan.refused), config.seed)
    return prepare_finalize.finalize(plan, config.encoding, sys.stderr, config.image_size)


def _prepare_alone(config: PrepareConfig, scan, run):
    """One prepare for the whole input: shards of each split, then its manifest (as prepare always did)."""
    output_dir, seed = config.output_dir, config.seed
    totals = {config.split: config.num_shards}
    if config.holdout_fraction:
        totals[config.holdout_split] = max(1, math.ceil(config.num_shards * config.holdout_fraction))
    existing = {name: existing_split_files(output_dir, name) for name in totals}
    for name, found in existing.items():
        if found and not config.overwrite:
            raise ConfigError(f"{min(found)} exists; pass --overwrite to replace split {name!r}")
    writers = {}

    def writer_for(name):
        if name not in writers:
            writers[name] = ShardWriter(
                output_dir, name, range(totals[name]), totals[name], existing[name], seed, trim=True
            )
        return writers[name]

    manifests = {}
    try:
        written = run(writer_for, "prepare", scan.refused)
        for name, writer in sorted(writers.items()):
            manifests[name] = Manifest(
                split=name,
                encoding=config.encoding,
                image_size=config.image_size,
                shards=writer.commit(),
                skipped=tuple(sorted(written.skipped[name])),
            )
            publish_manifest(manifest_path(output_dir, name), manifests[name].to_json(), existing[name])
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    _summarise(manifests, scan, output_dir)
    if not any(m.num_examples for m in manifests.values()):
        raise DataError(f"--input_dir={config.input_dir}: none of {scan.mine} image files could be read")
    return manifests


def _summarise(manifests, scan, output_dir):
    for split, manifest in sorted(manifests.items()):
        first = posixpath.join(output_dir, shard_name(split, 0, len(manifest.shards)))
        print(
            f"{split}: {manifest.num_examples} examples in {len(manifest.shards)} shards "
            f"({manifest.encoding}) -> {first} ..."
        )
        if manifest.skipped:
            print(
                f"{split}: skipped {len(manifest.skipped)} unreadable or oversized file(s): "
                f"{'; '.join(manifest.skipped)}"
            )
    if scan.ignored:
        print(
            f"ignored {scan.ignored} file(s) that are not images: {', '.join(scan.ignored_names)}"
            + (" ..." if scan.ignored > len(scan.ignored_names) else "")
        )
    if scan.source.subfolders:
        print(
            f"left out {scan.source.subfolders} subfolder(s) of --input_dir (pass --recursive to read them)"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    for name in ("input_dir", "output_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required", exitcode=2)
    with exit_on_user_error():
        prepare(from_flags(FLAGS))


def run():
    """Console-script entry point."""
    define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
