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

import dataclasses
import functools
import itertools
import math
import os
import posixpath
import sys
import time
import zlib

from absl import app, flags

from trainer.data import gcs, images, outputs, photo_source, prepare_finalize, prepare_tasks
from trainer.data.prepare_stream import Progress, Scan, count_share, write_photos
from trainer.data.schema import ENCODINGS, IMAGE_SIZE, Manifest, encode_example, manifest_path, shard_name
from trainer.data.shard_writer import ShardWriter, existing_split_files, write_text_atomic
from trainer.errors import ConfigError, DataError, exit_on_user_error, parse_flags_or_exit

FLAGS = flags.FLAGS
ENV_TASK_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
ENV_NUM_TASKS = "COLORIZER_NUM_TASKS"  # set by k8s/components/prepare (= the Job's completions)
ENV_RUN_NAME = "COLORIZER_RUN_NAME"  # set by k8s/components/prepare (= the Job's name)


def define_flags(flag_values=FLAGS):
    """Defined only when run as a CLI: absl flags are process-wide and `--seed` is also trainer.task's."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "input_dir", None, "Folder or gs:// prefix of colour photos (JPEG, PNG, BMP, GIF, TIFF, WebP).", **fv
    )
    flags.DEFINE_bool(
        "recursive", False, "Also read photos in subfolders (named by their relative path).", **fv
    )
    flags.DEFINE_string("gray_dir", None, "Optional folder of gray versions with the same file names.", **fv)
    flags.DEFINE_string("output_dir", None, "Where shards and manifests are written.", **fv)
    flags.DEFINE_string("split", "train", "Name of the split the photos go to.", **fv)
    flags.DEFINE_integer("num_shards", 8, "Shards for --split (all tasks together).", **fv)
    flags.DEFINE_float(
        "holdout_fraction", 0.0, "Fraction of photos held out into --holdout_split (by file name hash).", **fv
    )
    flags.DEFINE_string("holdout_split", "validation", "Name of the held-out split.", **fv)
    flags.DEFINE_enum(
        "encoding",
        "png",
        ENCODINGS,
        "How images are stored: png (small) or raw uint8 (fastest to decode).",
        **fv,
    )
    flags.DEFINE_integer(
        "image_size",
        IMAGE_SIZE,
        f"Side of the stored square pairs: {IMAGE_SIZE} (the model's), or larger for training "
        "on random crops at several scales (e.g. 240).",
        lower_bound=IMAGE_SIZE,
        **fv,
    )
    flags.DEFINE_integer(
        "workers", os.cpu_count() or 1, "Processes that decode and encode images (this task's).", **fv
    )
    flags.DEFINE_integer("seed", 0, "Seed of the shuffle of each shard's records.", **fv)
    flags.DEFINE_bool("overwrite", False, "Replace existing shards of the same split.", **fv)
    flags.DEFINE_integer(
        "num_tasks",
        None,
        f"Tasks sharing the photos (default: ${ENV_NUM_TASKS}; unset: one prepare without task records).",
        **fv,
    )
    flags.DEFINE_integer("task_index", None, f"This task, 0..num_tasks-1 (default: ${ENV_TASK_INDEX}).", **fv)
    flags.DEFINE_string(
        "run_name",
        None,
        f"Names the run its tasks belong to (default: ${ENV_RUN_NAME}); the same "
        "name and flags resume it, another name is a new run.",
        **fv,
    )


def check_output_dir(output_dir: str) -> None:
    """Proves --output_dir writable the way shards are written, before a single photo is decoded."""
    if gcs.is_gcs(output_dir):
        gcs.check_writable(output_dir)
    else:
        outputs.check_writable("output_dir", output_dir)


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


def _check_flags(split, num_shards, holdout_fraction, holdout_split, gray_dir):
    if num_shards < 1:
        raise ConfigError(f"--num_shards={num_shards}: must be at least 1")
    if not 0 <= holdout_fraction < 1:
        raise ConfigError(f"--holdout_fraction={holdout_fraction}: must be in [0, 1)")
    if holdout_fraction and holdout_split == split:
        raise ConfigError(f"--holdout_split={holdout_split} is the same as --split")
    if gray_dir and not gcs.is_gcs(gray_dir) and not os.path.isdir(gray_dir):
        raise ConfigError(f"--gray_dir={gray_dir}: no such folder")


def first_photos(scan: Scan, input_dir: str):
    """This task's photo names, after proving the listing holds at least one image (anyone's)."""
    names = iter(scan)
    first = next(names, None)
    if first is None and not scan.images:
        raise DataError(f"--input_dir={input_dir}: no image files ({', '.join(images.IMAGE_EXTENSIONS)})")
    return itertools.chain([] if first is None else [first], names)


@dataclasses.dataclass(frozen=True)
class _Pass:
    """How one task reads, assigns and decodes its photos."""

    input_dir: str
    gray_dir: str
    split: str
    holdout_split: str
    holdout_fraction: float
    encoding: str
    workers: int
    progress: bool
    recursive: bool
    task: int
    num_tasks: int
    started: float
    image_size: int

    def run(self, names, writer_for, label: str, refused: dict):
        """Decodes and writes `names`; a name in `refused` (Scan.refused) is skipped with its error."""

        def job_of(name):
            gray = self.gray_dir and photo_source.join(self.gray_dir, name)
            color = refused.pop(name, None) or photo_source.join(self.input_dir, name)
            return name, color, gray, (self.encoding, self.image_size)

        def split_of(name):
            return assign_split(name, self.split, self.holdout_split, self.holdout_fraction)

        counter = functools.partial(count_share, self.input_dir, self.recursive, self.task, self.num_tasks)
        progress = Progress(label, counter, enabled=self.progress, start=self.started)
        return write_photos(
            names, job_of, split_of, writer_for, _load_chunk, self.workers, progress, encode_example
        )


def prepare(
    input_dir,
    output_dir,
    split="train",
    num_shards=8,
    gray_dir=None,
    holdout_fraction=0.0,
    holdout_split="validation",
    encoding="png",
    workers=1,
    seed=0,
    overwrite=False,
    progress=True,
    recursive=False,
    num_tasks=None,
    task_index=None,
    run_name="",
    image_size=IMAGE_SIZE,
):
    """Writes the shards and manifests; returns {split: Manifest}. Raises ColorizerError for bad input.

    With `num_tasks` set this is task `task_index` of a run (trainer/data/prepare_tasks.py): it returns
    the manifests once every task's part is done (the last task to finish writes them), else {}.
    """
    started = time.monotonic()
    _check_flags(split, num_shards, holdout_fraction, holdout_split, gray_dir)
    plan = None
    if num_tasks is not None:
        # What a task run is: a restarted task with other settings is refused, not merged.
        config = {
            "input_dir": input_dir,
            "gray_dir": gray_dir,
            "recursive": recursive,
            "holdout_fraction": holdout_fraction,
            "encoding": encoding,
            "seed": seed,
        }
        if image_size != IMAGE_SIZE:  # only then: a run started before --image_size keeps its id
            config["image_size"] = image_size
        holdout = holdout_split if holdout_fraction else None
        plan = prepare_tasks.Plan.make(
            output_dir, num_tasks, task_index, run_name, split, holdout, num_shards, overwrite, config
        )
        if plan.state == "complete":
            print(
                f"{plan.label}: {', '.join(plan.splits)} already complete (run {plan.run}); nothing to do",
                file=sys.stderr,
            )
            return {}
        if plan.state == "finalize":  # this task's part was done before it was restarted
            return prepare_finalize.finalize(plan, encoding, sys.stderr, image_size)
    task = (task_index or 0, num_tasks or 1)
    scan = Scan(photo_source.PhotoSource(input_dir, recursive), *task, log=sys.stderr)
    names = first_photos(scan, input_dir)
    check_output_dir(output_dir)
    how = _Pass(
        input_dir,
        gray_dir,
        split,
        holdout_split,
        holdout_fraction,
        encoding,
        workers,
        progress,
        recursive,
        *task,
        started,
        image_size,
    )
    if plan is None:
        return _prepare_alone(scan, names, how, output_dir, num_shards, seed, overwrite)
    prepare_tasks.run(
        plan, scan, lambda writer_for: how.run(names, writer_for, plan.label, scan.refused), seed
    )
    return prepare_finalize.finalize(plan, encoding, sys.stderr, image_size)


def _prepare_alone(scan, names, how, output_dir, num_shards, seed, overwrite):
    """One prepare for the whole input: shards of each split, then its manifest (as prepare always did)."""
    totals = {how.split: num_shards}
    if how.holdout_fraction:
        totals[how.holdout_split] = max(1, math.ceil(num_shards * how.holdout_fraction))
    existing = {name: existing_split_files(output_dir, name) for name in totals}
    for name, found in existing.items():
        if found and not overwrite:
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
        written = how.run(names, writer_for, "prepare", scan.refused)
        for name, writer in sorted(writers.items()):
            manifests[name] = Manifest(
                split=name,
                encoding=how.encoding,
                image_size=how.image_size,
                shards=writer.commit(),
                skipped=tuple(sorted(written.skipped[name])),
            )
            write_text_atomic(manifest_path(output_dir, name), manifests[name].to_json(), existing[name])
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    _summarise(manifests, scan, output_dir)
    if not any(m.num_examples for m in manifests.values()):
        raise DataError(f"--input_dir={how.input_dir}: none of {scan.mine} image files could be read")
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


def _task_defaults(num_tasks, task_index, run_name):
    """--num_tasks, --task_index and --run_name, else what an Indexed Job's pod has in its environment."""
    env = os.environ
    try:
        if num_tasks is None and env.get(ENV_NUM_TASKS):
            num_tasks = int(env[ENV_NUM_TASKS])
        if task_index is None and env.get(ENV_TASK_INDEX):
            task_index = int(env[ENV_TASK_INDEX])
    except ValueError as exc:
        raise ConfigError(f"${ENV_NUM_TASKS} / ${ENV_TASK_INDEX}: not a number ({exc})") from None
    if task_index is not None and num_tasks is None:
        raise ConfigError(f"--task_index={task_index} needs --num_tasks (or ${ENV_NUM_TASKS})")
    if num_tasks is not None and task_index is None:
        raise ConfigError(f"--num_tasks={num_tasks} needs --task_index (or ${ENV_TASK_INDEX})")
    return num_tasks, task_index, run_name if run_name is not None else env.get(ENV_RUN_NAME, "")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    for name in ("input_dir", "output_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required", exitcode=2)
    with exit_on_user_error():
        num_tasks, task_index, run_name = _task_defaults(FLAGS.num_tasks, FLAGS.task_index, FLAGS.run_name)
        prepare(
            FLAGS.input_dir,
            FLAGS.output_dir,
            FLAGS.split,
            FLAGS.num_shards,
            FLAGS.gray_dir,
            FLAGS.holdout_fraction,
            FLAGS.holdout_split,
            FLAGS.encoding,
            FLAGS.workers,
            FLAGS.seed,
            FLAGS.overwrite,
            True,
            FLAGS.recursive,
            num_tasks,
            task_index,
            run_name,
            FLAGS.image_size,
        )


def run():
    """Console-script entry point."""
    define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
    run()
