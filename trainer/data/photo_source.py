"""Where `trainer.prepare` finds photos: a local folder or a gs:// prefix, listed as a stream.

Free of TensorFlow, like trainer/data/images.py: decode worker processes import only this, Pillow and
(for gs://) google-cloud-storage. A listing yields names as the storage returns them (a page of
1000 at a time on Cloud Storage), so the first photo is decoded seconds after start whatever the
size of the bucket, and no list of every name is ever built.
"""

import concurrent.futures
import hashlib
import io
import os

from trainer.data import gcs, images
from trainer.errors import ConfigError

_DOWNLOAD_THREADS = 8  # per decode process: hides object-storage latency behind decoding
# The largest photo file prepare reads. A decode process holds a whole chunk of gs:// photos (16)
# in memory at once, so this keeps it under 1 GiB; a 100-megapixel camera JPEG fits under it. Larger
# files are skipped and named from their listed size, before a byte is read.
MAX_PHOTO_BYTES = 64 * 1024 * 1024
# How a task of an Indexed Job (prepare's, the client's) knows its share.
ENV_TASK_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
ENV_NUM_TASKS = "COLORIZER_NUM_TASKS"  # set by the k8s components (= the Job's completions)
ENV_RUN_NAME = "COLORIZER_RUN_NAME"  # set by the k8s components (= the Job's name)


class TooLarge(ValueError):
    """A photo file above MAX_PHOTO_BYTES: skipped and named instead of read."""


def size_text(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def is_image(name: str) -> bool:
    return name.lower().endswith(images.IMAGE_EXTENSIONS)


def task_of(name: str, num_tasks: int) -> int:
    """The task that owns a photo: a stable hash of its name (unrelated to the holdout's CRC32)."""
    if num_tasks == 1:
        return 0
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big") % num_tasks


def task_defaults(num_tasks, task_index, run_name, env=os.environ):
    """--num_tasks, --task_index and --run_name, else what an Indexed Job's pod has in its environment."""
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


class PhotoSource:
    """Names (relative to `input_dir`, '/'-separated) and sizes of the files under it, streamed.

    Without `recursive` only the folder's own files are listed (as prepare always did), and
    `subfolders` counts the subfolders left out; with it, every file below, named by its path. A
    local listing names each real file once, however many symlinks reach it (`_walk`).
    """

    def __init__(self, input_dir: str, recursive: bool = False):
        self.input_dir, self.recursive, self.subfolders = input_dir, recursive, 0
        if not gcs.is_gcs(input_dir) and not os.path.isdir(input_dir):
            raise ConfigError(f"--input_dir={input_dir}: no such folder")

    def __iter__(self):
        if gcs.is_gcs(self.input_dir):
            listing = gcs.Listing(self.input_dir, self.recursive)
            yield from listing
            self.subfolders = listing.subfolders
            return
        yield from self._walk()

    def _walk(self):
        """Sorted, one folder at a time (its files, then its subfolders), so the order (and so the
        shards) is the same on every run.

        Symlinks are followed, yet each real folder is walked once and each real file listed once,
        under the first name that reaches it: a link to a folder already walked, or to one holding
        the input folder or the link itself (a loop), is left out, and so is a link to a file that
        another name already lists. A link that can't be resolved (broken, or a loop) is skipped.
        """
        root = os.path.realpath(self.input_dir)
        walked: set = set()
        linked: set = set()  # real paths of the files listed through a link to the file itself
        stack = [(self.input_dir, "", root)]
        while stack:
            folder, relative, parent = stack.pop()
            real = os.path.realpath(folder)
            if real in walked or (folder != self.input_dir and _loops(real, root, parent)):
                continue
            walked.add(real)
            subfolders = []
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                kind = _kind(entry)
                if kind == "dir":
                    subfolders.append(entry)
                elif kind == "file" and _first_name(entry, real, walked, linked):
                    yield relative + entry.name, entry.stat().st_size
            if not self.recursive:
                self.subfolders += len(subfolders)
                return
            stack += [(e.path, relative + e.name + "/", real) for e in reversed(subfolders)]


def _kind(entry: os.DirEntry) -> str:
    """'file' or 'dir' (through symlinks), else '' (a broken link, a link loop, a device...)."""
    try:
        return "file" if entry.is_file() else "dir" if entry.is_dir() else ""
    except OSError:  # ELOOP: a link that leads back to itself
        return ""


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _loops(real: str, root: str, parent: str) -> bool:
    """Whether the folder `real`, reached from the folder `parent`, holds the input folder or
    `parent` itself: walking it would come back to where the walk already is."""
    return _contains(real, root) or _contains(real, parent)


def _first_name(entry: os.DirEntry, folder: str, walked: set, linked: set) -> bool:
    """Whether this file entry (in the real folder `folder`) is the first name of its real file.

    A plain file is, unless a link listed it before its folder was walked. A link to a file is left
    out when the file's own folder is walked (that walk lists it) or another link listed it.
    """
    if not entry.is_symlink():
        return not linked or os.path.join(folder, entry.name) not in linked
    target = os.path.realpath(entry.path)
    if os.path.dirname(target) in walked or target in linked:
        return False
    linked.add(target)
    return True


def _read(path: str):
    """Bytes of a gs:// object, or the local path itself (Pillow opens it)."""
    return io.BytesIO(gcs.read_bytes(path)) if gcs.is_gcs(path) else path


def fetch(jobs):
    """The jobs (name, colour path, gray path or None, storage format) with gs:// paths replaced by
    their bytes, downloaded by a few threads at once; a missing object's exception takes its place.
    A job whose colour is already an exception (a photo refused from its listing) is left as it is."""

    def one(job):
        name, color, gray, stored_as = job
        if not _remote(job):
            return job
        try:
            return name, _read(color), gray and _read(gray), stored_as
        except FileNotFoundError as exc:
            return name, exc, None, stored_as

    if not any(_remote(job) for job in jobs):
        return jobs
    with concurrent.futures.ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS) as pool:
        return list(pool.map(one, jobs))


def _remote(job) -> bool:
    return isinstance(job[1], str) and gcs.is_gcs(job[1])
