"""What one `trainer.prepare` run (or one task of it) does: a frozen config, validated once, and its flags."""

import dataclasses
import os
from typing import Optional

from absl import flags

from trainer.data import gcs
from trainer.data.photo_source import ENV_NUM_TASKS, ENV_RUN_NAME, ENV_TASK_INDEX, task_defaults
from trainer.data.schema import ENCODINGS, IMAGE_SIZE
from trainer.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Inputs, outputs and how photos are split, decoded and stored; the flags of the same names."""

    input_dir: str
    output_dir: str
    split: str = "train"
    num_shards: int = 8
    gray_dir: Optional[str] = None
    holdout_fraction: float = 0.0
    holdout_split: str = "validation"
    encoding: str = "png"
    workers: int = 1
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    recursive: bool = False
    num_tasks: Optional[int] = None  # None: one prepare for the whole input, without task records
    task_index: Optional[int] = None
    run_name: str = ""
    image_size: int = IMAGE_SIZE

    def __post_init__(self):
        if self.num_shards < 1:
            raise ConfigError(f"--num_shards={self.num_shards}: must be at least 1")
        if not 0 <= self.holdout_fraction < 1:
            raise ConfigError(f"--holdout_fraction={self.holdout_fraction}: must be in [0, 1)")
        if self.holdout_fraction and self.holdout_split == self.split:
            raise ConfigError(f"--holdout_split={self.holdout_split} is the same as --split")
        if self.gray_dir and not gcs.is_gcs(self.gray_dir) and not os.path.isdir(self.gray_dir):
            raise ConfigError(f"--gray_dir={self.gray_dir}: no such folder")
        if (self.num_tasks is None) != (self.task_index is None):
            raise ConfigError("--num_tasks and --task_index go together")

    @property
    def task(self) -> tuple[int, int]:
        """(this task's index, number of tasks): (0, 1) for a prepare without tasks."""
        return self.task_index or 0, self.num_tasks or 1

    def identity(self) -> dict:
        """What a task run is: a restarted task whose settings differ is refused, not merged."""
        identity = {
            "input_dir": self.input_dir,
            "gray_dir": self.gray_dir,
            "recursive": self.recursive,
            "holdout_fraction": self.holdout_fraction,
            "encoding": self.encoding,
            "seed": self.seed,
        }
        if self.image_size != IMAGE_SIZE:  # only then: a run started before --image_size keeps its id
            identity["image_size"] = self.image_size
        return identity


def from_flags(values: flags.FlagValues) -> PrepareConfig:
    """The config of parsed `trainer.prepare` flags, tasks defaulting from an Indexed Job's environment."""
    num_tasks, task_index, run_name = task_defaults(values.num_tasks, values.task_index, values.run_name)
    return PrepareConfig(
        input_dir=values.input_dir,
        output_dir=values.output_dir,
        split=values.split,
        num_shards=values.num_shards,
        gray_dir=values.gray_dir,
        holdout_fraction=values.holdout_fraction,
        holdout_split=values.holdout_split,
        encoding=values.encoding,
        workers=values.workers,
        seed=values.seed,
        overwrite=values.overwrite,
        recursive=values.recursive,
        num_tasks=num_tasks,
        task_index=task_index,
        run_name=run_name,
        image_size=values.image_size,
    )


def define_flags(flag_values=flags.FLAGS):
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
