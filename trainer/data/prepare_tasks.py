"""Many `trainer.prepare` tasks writing one dataset, race-free on object storage.

Task i of N owns the photos whose name hashes to i and a fixed range of each split's shard indices
(`{split}-{index}-of-{total}.tfrecord`), so all tasks' shards form one split. Its progress is a part
record `{split}.part-{i}-of-{N}.json` beside the shards:

1. claim: the part is written as `writing` (created only if absent, or replacing this run's own);
2. the task's shards are uploaded, each created only if absent (or replacing what was listed);
3. the part is rewritten as `done`, with its shards' example counts and skipped files;
4. every task then reads all N parts; one that finds all `done` creates the manifests with
   if-generation-match=0, so of two finishing at once exactly one writes and the other sees its
   manifest. A manifest therefore never counts a shard that isn't complete.

A run is its name (the Kubernetes Job's) plus its flags. A restarted task finds its own part: `done`
skips to step 4, `writing` redoes its shards (leftovers of the killed attempt are replaced). Anything
of another run (manifest, parts, shards) stops the task unless --overwrite, as a lone prepare does.
"""

import dataclasses
import hashlib
import json
import math
import posixpath
import re
import sys
import time

from trainer.data import storage
from trainer.data.schema import Manifest, manifest_path, parse_shard_name, shard_name
from trainer.data.shard_writer import ShardWriter
from trainer.errors import ConfigError, DataError


def part_path(output_dir: str, split: str, task: int, num_tasks: int) -> str:
    return posixpath.join(output_dir, f"{split}.part-{task:05d}-of-{num_tasks:05d}.json")


def split_files(output_dir: str, split: str) -> dict:
    """{path: generation} of the split's shards, parts and manifest."""
    part = re.compile(re.escape(split) + r"\.part-\d{5}-of-\d{5}\.json$")

    def ours(path):
        base = posixpath.basename(path)
        return (
            (parse_shard_name(base) or ("",))[0] == split
            or part.match(base)
            or path == manifest_path(output_dir, split)
        )

    return {p: g for p, g in storage.list_generations(output_dir, split).items() if ours(p)}


def shard_range(task: int, num_tasks: int, total: int) -> range:
    """Task i's fixed share of a split's shard indices: every task gets at least one when total >= N."""
    return range(task * total // num_tasks, (task + 1) * total // num_tasks)


@dataclasses.dataclass
class Plan:
    """What task `task` of run `run` must do: `state` is complete, finalize (its part is done) or work."""

    output_dir: str
    task: int
    num_tasks: int
    run: str
    splits: dict  # split name -> total shards
    config: dict
    overwrite: bool
    state: str = "work"
    existing: dict = dataclasses.field(default_factory=dict)  # split -> {my shard path: generation}
    part_generation: int = 0

    @property
    def label(self) -> str:
        return f"task {self.task}/{self.num_tasks}"

    @property
    def main_split(self) -> str:
        return next(iter(self.splits))

    @classmethod
    def make(cls, output_dir, num_tasks, task, run_name, split, holdout_split, num_shards, overwrite, config):
        """Checks the task flags and what the output already holds; raises ConfigError on a conflict."""
        if num_tasks < 1 or not 0 <= (task if task is not None else -1) < num_tasks:
            raise ConfigError(
                f"--task_index={task} --num_tasks={num_tasks}: need 0 <= task_index < num_tasks"
            )
        if num_shards < num_tasks:
            raise ConfigError(
                f"--num_shards={num_shards} is fewer than --num_tasks={num_tasks}: each task writes "
                "shards of its own"
            )
        if "://" in output_dir and not storage.is_gcs(output_dir):
            raise ConfigError(f"--output_dir={output_dir}: tasks write to a local folder or gs:// only")
        splits = {split: num_shards}
        if holdout_split:
            splits[holdout_split] = max(num_tasks, math.ceil(num_shards * config["holdout_fraction"]))
        config = {**config, "splits": splits, "num_tasks": num_tasks}
        digest = hashlib.sha256(json.dumps([run_name or "", config], sort_keys=True).encode()).hexdigest()[
            :12
        ]
        plan = cls(
            output_dir.rstrip("/"),
            task,
            num_tasks,
            f"{run_name}-{digest}" if run_name else digest,
            splits,
            config,
            overwrite,
        )
        plan._inspect()
        return plan

    def _inspect(self) -> None:
        manifests = {s: storage.read_text(manifest_path(self.output_dir, s)) for s in self.splits}
        runs = {
            s: Manifest.from_json(t, manifest_path(self.output_dir, s)).run if t else None
            for s, (t, _) in manifests.items()
        }
        if all(r == self.run for r in runs.values()):
            self.state = "complete"
            return
        mine = part_path(self.output_dir, self.main_split, self.task, self.num_tasks)
        text, self.part_generation = storage.read_text(mine)
        part = json.loads(text) if text else None
        ours = part is not None and part.get("run") == self.run
        if part is not None and ours and part.get("state") == "done":
            self.state = "finalize"
        foreign = {
            manifest_path(self.output_dir, s): g
            for s, (t, g) in manifests.items()
            if t and runs[s] != self.run
        }
        for split, total in self.splits.items():
            files = split_files(self.output_dir, split)
            names = {shard_name(split, i, total) for i in shard_range(self.task, self.num_tasks, total)}
            self.existing[split] = {p: g for p, g in files.items() if posixpath.basename(p) in names}
            if self.overwrite or self.state == "finalize":
                continue
            other = [
                p
                for p in files
                if (parse_shard_name(p) or (0, 0, total))[2] != total
                or (".part-" in posixpath.basename(p) and f"-of-{self.num_tasks:05d}." not in p)
            ]
            if part is not None and not ours:
                other.append(mine)
            if self.existing[split] and not ours:
                other += sorted(self.existing[split])
            conflict = sorted(foreign) + sorted(set(other) - set(foreign))  # a manifest says most
            if conflict:
                raise ConfigError(
                    f"{conflict[0]} exists (not from run {self.run}); pass --overwrite to replace "
                    f"split {split!r}"
                )
        if self.overwrite and foreign:
            storage.delete(foreign)  # first, so no reader pairs an old manifest with new shards

    def writers(self, seed: int) -> dict:
        return {
            s: ShardWriter(
                self.output_dir,
                s,
                shard_range(self.task, self.num_tasks, total),
                total,
                self.existing[s],
                seed,
            )
            for s, total in self.splits.items()
        }

    def write_part(self, body: dict) -> None:
        path = part_path(self.output_dir, self.main_split, self.task, self.num_tasks)
        text = json.dumps(
            {"run": self.run, "task": self.task, "num_tasks": self.num_tasks, **body},
            indent=1,
            sort_keys=True,
        )
        generation = storage.write_text(path, text + "\n", self.part_generation)
        if not generation:
            raise DataError(f"{path}: changed by another writer while this task ran (two pods of one index?)")
        self.part_generation = generation


def run(plan: Plan, scan, do_pass, seed: int, log=None) -> None:
    """Does this task's part: claim, decode and write its shards, record them as done."""
    log = log or sys.stderr
    started = time.monotonic()
    plan.write_part({"state": "writing"})
    writers = plan.writers(seed)
    try:
        written = do_pass(writers.__getitem__)
        counts = {s: w.commit() for s, w in writers.items()}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    body = {
        "state": "done",
        "photos": scan.mine,
        "bytes_read": scan.bytes,
        "ignored": scan.ignored,
        "ignored_names": scan.ignored_names,
        "bytes_written": sum(w.bytes for w in writers.values()),
        "seconds": round(time.monotonic() - started, 1),
        "splits": {s: {"shards": counts[s], "skipped": sorted(written.skipped[s])} for s in counts},
    }
    plan.write_part(body)
    print(f"{plan.label}: " + summary([body]), file=log)
    for split, part in body["splits"].items():
        if part["skipped"]:
            print(
                f"{plan.label}: {split}: skipped {len(part['skipped'])} unreadable or oversized file(s): "
                f"{'; '.join(part['skipped'][:10])}",
                file=log,
            )
    if scan.source.subfolders:
        print(
            f"{plan.label}: left out {scan.source.subfolders} subfolder(s) of --input_dir (pass --recursive "
            "to read them)",
            file=log,
        )


def summary(parts: list) -> str:
    """photos, skipped, bytes, shards, rate of one or more parts, in one line."""
    photos = sum(p["photos"] for p in parts)
    skipped = sum(len(s["skipped"]) for p in parts for s in p["splits"].values())
    shards = sum(len(s["shards"]) for p in parts for s in p["splits"].values())
    seconds = max((p["seconds"] for p in parts), default=0)
    return (
        f"{photos} photos, {skipped} skipped, {sum(p['bytes_read'] for p in parts) / 1e6:.1f} MB read, "
        f"{sum(p['bytes_written'] for p in parts) / 1e6:.1f} MB in {shards} shards, "
        f"{sum(p['ignored'] for p in parts)} non-image files, {photos / max(seconds, 1e-9):.1f} photos/s"
    )
