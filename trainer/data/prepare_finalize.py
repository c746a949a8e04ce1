"""The end of a multi-task prepare: once every task's part is `done`, one manifest per split.

Every task runs this after its own part; only one that reads all N parts as done goes on, and the
manifest is created with if-generation-match=0 (a local folder: an exclusive link), so when two
tasks finish together one writes it and the other finds it written by this run.
"""

import json
import posixpath

from trainer.data import storage
from trainer.data.prepare_tasks import part_path, shard_range, split_files, summary
from trainer.data.schema import IMAGE_SIZE, Manifest, manifest_path, parse_shard_name, shard_name
from trainer.errors import DataError


def _parts(plan) -> list:
    parts = []
    for task in range(plan.num_tasks):
        text, _ = storage.read_text(part_path(plan.output_dir, plan.main_split, task, plan.num_tasks))
        part = json.loads(text) if text else None
        parts.append(part if part and part.get("run") == plan.run and part.get("state") == "done" else None)
    return parts


def _manifest_run(path: str):
    text, generation = storage.read_text(path)
    return (Manifest.from_json(text, path).run if text else None), generation


def _publish(plan, manifest: Manifest) -> bool:
    """Creates the manifest if absent (replaces another run's only with --overwrite); False if a peer did."""
    path = manifest_path(plan.output_dir, manifest.split)
    run, generation = _manifest_run(path)
    if run == plan.run:
        return False
    if run is not None and not plan.overwrite:
        raise DataError(f"{path}: written by another run ({run}) while this one ran; nothing was overwritten")
    if storage.write_text(path, manifest.to_json(), generation):
        return True
    if _manifest_run(path)[0] != plan.run:
        raise DataError(
            f"{path}: changed by another writer while this run was writing; nothing was overwritten"
        )
    return False


def _clean(plan, manifests: dict) -> None:
    """--overwrite: removes what older runs left (shards of other counts, other task counts' parts)."""
    for split, manifest in manifests.items():
        parts = {
            part_path(plan.output_dir, plan.main_split, t, plan.num_tasks) for t in range(plan.num_tasks)
        }
        stale = {
            p: g
            for p, g in split_files(plan.output_dir, split).items()
            if (parse_shard_name(p) and posixpath.basename(p) not in manifest.shards)
            or (".part-" in posixpath.basename(p) and p not in parts)
        }
        storage.delete(stale)


def finalize(plan, encoding: str, log, image_size: int = IMAGE_SIZE) -> dict:
    """Writes the manifests if every part is done (unless a peer just did); returns them, or {} while
    other tasks are still at work."""
    parts = _parts(plan)
    waiting = [task for task, part in enumerate(parts) if part is None]
    if waiting:
        if all(_manifest_run(manifest_path(plan.output_dir, s))[0] == plan.run for s in plan.splits):
            print(f"{plan.label}: {', '.join(plan.splits)} complete (run {plan.run})", file=log)
        else:
            more = f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
            print(
                f"{plan.label}: waiting for task(s) {', '.join(map(str, waiting[:10]))}{more}; the last task "
                "to finish writes the manifests",
                file=log,
            )
        return {}
    manifests, wrote = {}, False
    for split, total in plan.splits.items():
        shards, skipped = {}, []
        for part in parts:
            shards.update(part["splits"][split]["shards"])
            skipped += part["splits"][split]["skipped"]
        expected = {
            shard_name(split, i, total)
            for t in range(plan.num_tasks)
            for i in shard_range(t, plan.num_tasks, total)
        }
        if set(shards) != expected:
            raise DataError(f"{plan.output_dir}: the parts of run {plan.run} don't cover split {split!r}")
        manifests[split] = Manifest(
            split=split,
            encoding=encoding,
            image_size=image_size,
            shards=dict(sorted(shards.items())),
            skipped=tuple(sorted(skipped)),
            run=plan.run,
        )
        wrote = _publish(plan, manifests[split]) or wrote
    if plan.overwrite:
        _clean(plan, manifests)
    for split, manifest in manifests.items():
        print(
            f"{split}: {manifest.num_examples} examples in {len(manifest.shards)} shards ({encoding}), "
            f"{len(manifest.skipped)} skipped -> {manifest_path(plan.output_dir, split)}",
            file=log,
        )
    who = "wrote the manifests" if wrote else "found the manifests written by another task"
    print(f"{plan.label} {who}; all {plan.num_tasks} tasks: {summary(parts)}", file=log)
    if not any(m.num_examples for m in manifests.values()):
        photos = sum(p["photos"] for p in parts)
        raise DataError(f"none of {photos} image files could be read (run {plan.run})")
    return manifests
