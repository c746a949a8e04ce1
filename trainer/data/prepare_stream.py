"""The streaming core of `trainer.prepare`: listed names -> decode processes -> shard writers.

Names flow from the listing through a bounded window of decode jobs, so memory stays flat and the
first photo is decoded seconds after start, whatever the number of photos. Progress is a log line
with rate and ETA every few seconds (a pod's log shows a tqdm bar badly); the ETA's total comes
from a second, counting-only listing in a background thread.
"""

import collections
import concurrent.futures
import dataclasses
import itertools
import sys
import threading
import time

from trainer.data import photo_source
from trainer.data.photo_source import PhotoSource, TooLarge, is_image, size_text, task_of

CHUNK = 16  # photos per decode job: amortises inter-process overhead, keeps the first result quick
IGNORED_NAMED = 10  # non-image files named in the summary; the rest are counted


class Scan:
    """Iterates this task's photo names from a listing, counting what the listing holds as it goes.

    A photo whose listed size is above photo_source.MAX_PHOTO_BYTES is still named, but with a
    TooLarge in `refused` (taken by its decode job, so it is skipped without being read) and a
    warning line to `log`.
    """

    def __init__(self, source, task: int = 0, num_tasks: int = 1, log=None):
        self.source, self.task, self.num_tasks, self.log = source, task, num_tasks, log
        self.images = self.mine = self.bytes = self.ignored = 0
        self.ignored_names: list = []
        self.max_bytes = photo_source.MAX_PHOTO_BYTES
        self.refused: dict = {}  # name -> TooLarge, until its decode job takes it

    def __iter__(self):
        for name, size in self.source:
            if task_of(name, self.num_tasks) != self.task:
                self.images += is_image(name)
                continue
            if not is_image(name):
                self.ignored += 1
                if len(self.ignored_names) < IGNORED_NAMED:
                    self.ignored_names.append(name)
                continue
            self.images += 1
            self.mine += 1
            if size > self.max_bytes:
                self._refuse(name, size)
            else:
                self.bytes += size
            yield name

    def _refuse(self, name: str, size: int) -> None:
        error = TooLarge(f"{size_text(size)}, above the {size_text(self.max_bytes)} limit for one photo file")
        self.refused[name] = error
        if self.log:
            print(f"warning: skipping {name} without reading it: {error}", file=self.log, flush=True)


def count_share(input_dir: str, recursive: bool, task: int, num_tasks: int) -> int:
    """How many photos this task will process: a listing of its own that keeps no names."""
    return sum(1 for _ in Scan(PhotoSource(input_dir, recursive), task, num_tasks))


class Progress:
    """`{label}: done/total photos (k skipped), r photos/s, ETA` to stderr at most every `every` seconds."""

    def __init__(
        self, label: str, count=None, every: float = 10.0, enabled: bool = True, out=None, start=None
    ):
        self.label, self.every, self.enabled, self.out = label, every, enabled, out or sys.stderr
        self.start = start or time.monotonic()
        self.last = time.monotonic()
        self.total, self._counter = None, count
        self.first_after: float | None = None

    def count_in_background(self) -> None:
        """Starts the counting listing; call it after the decode processes are forked (no thread to copy)."""
        if self.enabled and self._counter is not None:
            threading.Thread(target=self._count, args=(self._counter,), daemon=True).start()

    def _count(self, count):
        try:
            self.total = count()
        except Exception:  # noqa: BLE001 - the ETA stays unknown; the main listing reports real errors
            self.total = None

    def update(self, done: int, skipped: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.first_after is None and done + skipped:
            self.first_after = now - self.start
            self._print(f"{self.label}: first photo decoded {self.first_after:.1f} s after start")
        if not self.enabled or (not final and now - self.last < self.every):
            return
        self.last, elapsed = now, max(now - self.start, 1e-9)
        rate, total = (done + skipped) / elapsed, self.total
        if final:
            eta = f"done in {elapsed:.0f} s"
        elif total and rate:
            eta = f"ETA {_duration(max(total - done - skipped, 0) / rate)}"
        else:
            eta = "ETA unknown (still counting photos)"
        self._print(
            f"{self.label}: {done + skipped}/{total if total is not None else '?'} photos "
            f"({skipped} skipped), {rate:.1f} photos/s, {eta}"
        )

    def _print(self, line: str) -> None:
        if self.enabled:
            print(line, file=self.out, flush=True)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@dataclasses.dataclass
class Written:
    """What one pass wrote: photos written, and per split the files skipped."""

    examples: int = 0
    skipped: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))


def decoded(pool, jobs, load_chunk, window: int):
    """Results of `load_chunk` over `jobs` in order, at most `window` chunks in flight."""
    pending: collections.deque = collections.deque()
    jobs = iter(jobs)
    while True:
        chunk = list(itertools.islice(jobs, CHUNK))
        if chunk:
            pending.append(pool.submit(load_chunk, chunk))
        if pending and (len(pending) >= window or not chunk):
            yield from pending.popleft().result()
        elif not chunk:
            return


def write_photos(
    names, job_of, split_of, writer_for, load_chunk, workers: int, progress: Progress, encode
) -> Written:
    """Decodes `names` in `workers` processes and writes each pair to its split's writer."""
    written, skipped = Written(), 0
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        pool.submit(int).result()  # forks every decode process now, before any thread starts
        progress.count_in_background()
        for name, pair, error in decoded(
            pool, (job_of(n) for n in names), load_chunk, window=4 * max(1, workers)
        ):
            split = split_of(name)
            writer = writer_for(split)
            if error:
                written.skipped[split].append(f"{name} ({error})")
                skipped += 1
            else:
                writer.write(encode(name, *pair))
                written.examples += 1
            progress.update(written.examples, skipped)
    progress.update(written.examples, skipped, final=True)
    return written
