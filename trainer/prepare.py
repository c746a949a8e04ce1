"""`python -m trainer.prepare`: a folder of colour photos -> TFRecord shards and a manifest per split.

    python -m trainer.prepare --input_dir=photos/ --output_dir=data/ --split=train --num_shards=8 \
        --holdout_fraction=0.1 --holdout_split=validation
"""

import concurrent.futures
import math
import os
import posixpath
import random
import sys
import zlib

from absl import app, flags

from trainer import gcs, images, outputs
from trainer.errors import ConfigError, DataError, exit_on_user_error, parse_flags_or_exit
from trainer.schema import ENCODINGS, IMAGE_SIZE, Manifest, encode_example, manifest_path, shard_name
from trainer.shard_writer import ShardWriter, existing_split_files, write_text_atomic

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a CLI: absl flags are process-wide and `--seed` is also trainer.task's."""
    flags.DEFINE_string("input_dir", None, "Folder of colour photos (JPEG, PNG, BMP, GIF, TIFF, WebP).")
    flags.DEFINE_string("gray_dir", None, "Optional folder of gray versions with the same file names.")
    flags.DEFINE_string("output_dir", None, "Where shards and manifests are written.")
    flags.DEFINE_string("split", "train", "Name of the split the photos go to.")
    flags.DEFINE_integer("num_shards", 8, "Shards for --split.")
    flags.DEFINE_float("holdout_fraction", 0.0, "Fraction of photos held out into --holdout_split (by file name hash).")
    flags.DEFINE_string("holdout_split", "validation", "Name of the held-out split.")
    flags.DEFINE_enum("encoding", "png", ENCODINGS, "How images are stored: png (small) or raw uint8 (fastest to decode).")
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes that decode and encode images.")
    flags.DEFINE_integer("seed", 0, "Seed of the shuffle that spreads photos over shards.")
    flags.DEFINE_bool("overwrite", False, "Replace existing shards of the same split.")


def list_photos(input_dir: str, gray_dir=None):
    """Returns (photo names sorted, names ignored because they are not images)."""
    if not os.path.isdir(input_dir):
        raise ConfigError(f"--input_dir={input_dir}: no such folder")
    if gray_dir and not os.path.isdir(gray_dir):
        raise ConfigError(f"--gray_dir={gray_dir}: no such folder")
    names = sorted(n for n in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, n)))
    photos = [n for n in names if n.lower().endswith(images.IMAGE_EXTENSIONS)]
    if not photos:
        raise DataError(f"--input_dir={input_dir}: no image files ({', '.join(images.IMAGE_EXTENSIONS)})")
    return photos, sorted(set(names) - set(photos))


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
    name, color_path, gray_path, encoding = job
    try:
        if gray_path and not os.path.exists(gray_path):
            raise FileNotFoundError(f"no gray version {gray_path}")
        return name, images.load_pair(color_path, gray_path, IMAGE_SIZE, encoding), None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow raises all three for bad files
        return name, None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def prepare(input_dir, output_dir, split="train", num_shards=8, gray_dir=None, holdout_fraction=0.0,
            holdout_split="validation", encoding="png", workers=1, seed=0, overwrite=False, progress=True):
    """Writes the shards and manifests; returns {split: Manifest}. Raises ColorizerError for bad input."""
    if num_shards < 1:
        raise ConfigError(f"--num_shards={num_shards}: must be at least 1")
    if not 0 <= holdout_fraction < 1:
        raise ConfigError(f"--holdout_fraction={holdout_fraction}: must be in [0, 1)")
    if holdout_fraction and holdout_split == split:
        raise ConfigError(f"--holdout_split={holdout_split} is the same as --split")
    photos, ignored = list_photos(input_dir, gray_dir)
    check_output_dir(output_dir)
    random.Random(seed).shuffle(photos)
    assigned = {}
    for name in photos:
        assigned.setdefault(assign_split(name, split, holdout_split, holdout_fraction), []).append(name)
    shard_counts = {holdout_split: max(1, math.ceil(num_shards * holdout_fraction)), split: num_shards}
    existing = {name: existing_split_files(output_dir, name) for name in assigned}
    for name, found in existing.items():
        if found and not overwrite:
            raise ConfigError(f"{min(found)} exists; pass --overwrite to replace split {name!r}")
    manifests = {}
    for name, members in sorted(assigned.items()):
        writer = ShardWriter(output_dir, name, min(shard_counts[name], len(members)), existing[name])
        manifests[name] = _write_split(input_dir, gray_dir, members, writer, encoding, workers, progress)
        write_text_atomic(manifest_path(output_dir, name), manifests[name].to_json(), existing[name])
    _summarise(manifests, ignored, output_dir)
    if not any(m.num_examples for m in manifests.values()):
        raise DataError(f"--input_dir={input_dir}: none of {len(photos)} image files could be read")
    return manifests


def _write_split(input_dir, gray_dir, members, writer, encoding, workers, progress) -> Manifest:
    """Decodes `members` in worker processes and writes them through `writer`; returns the manifest."""
    jobs = [(n, os.path.join(input_dir, n), gray_dir and os.path.join(gray_dir, n), encoding) for n in members]
    skipped = []
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            results = pool.map(_load, jobs, chunksize=8)
            if progress:
                from tqdm import tqdm  # only the CLI shows a bar

                results = tqdm(results, total=len(jobs), desc=writer.split, unit="img", file=sys.stderr)
            for name, pair, error in results:
                if error:
                    skipped.append(f"{name} ({error})")
                else:
                    writer.write(encode_example(name, *pair))
        counts = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return Manifest(split=writer.split, encoding=encoding, shards=counts, skipped=tuple(sorted(skipped)))


def _summarise(manifests, ignored, output_dir):
    for split, manifest in sorted(manifests.items()):
        print(f"{split}: {manifest.num_examples} examples in {len(manifest.shards)} shards "
              f"({manifest.encoding}) -> {posixpath.join(output_dir, shard_name(split, 0, len(manifest.shards)))} ...")
        if manifest.skipped:
            print(f"{split}: skipped {len(manifest.skipped)} unreadable file(s): {'; '.join(manifest.skipped)}")
    if ignored:
        print(f"ignored {len(ignored)} file(s) that are not images: {', '.join(ignored[:10])}"
              + (" ..." if len(ignored) > 10 else ""))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    for name in ("input_dir", "output_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required", exitcode=2)
    with exit_on_user_error():
        prepare(FLAGS.input_dir, FLAGS.output_dir, FLAGS.split, FLAGS.num_shards, FLAGS.gray_dir,
                FLAGS.holdout_fraction, FLAGS.holdout_split, FLAGS.encoding, FLAGS.workers, FLAGS.seed,
                FLAGS.overwrite)


def run():
    """Console-script entry point."""
    define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
    run()
