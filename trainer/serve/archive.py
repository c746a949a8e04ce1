"""Colorize an archive: files, folders and gs:// prefixes of photos as people have them.

* **Naming.** Each photo is written to OUT/<its path under the folder or prefix that listed it>,
  the extension replaced by `.png` (`scans/a.tif` -> `OUT/scans/a.png`); a file named by itself is
  written to OUT/<its name>.png. Where two photos would share an output (`x.jpg` and `x.png` in one
  folder), both keep their extension (`x.jpg.png`, `x.png.png`), so no output depends on the order.
* **What is sent:** `trainer.data.images.request_bytes`, the picture as displayed (EXIF
  orientation, TIFF, WebP, 16-bit, CMYK...) in a format serving decodes, its pixels counted from
  the header first.
* **Nothing lost, nothing done twice.** A file that can't be read or that serving refuses is
  skipped and named; TF Serving's 400 doesn't say which image of a batch failed, so the batch is
  split until the bad one fails alone. Outputs are written whole (`<output>.partial`, then a
  rename; one upload on gs://); existing outputs are skipped, so the same command resumes, and
  with tasks (`list_photos`' shares) a killed and restarted task writes each output once.
* **Fast.** `parallel` requests at once, each thread reading and writing its own batch, so reading,
  predicting and writing overlap.
"""

import collections
import concurrent.futures
import dataclasses
import os
import posixpath
from typing import Callable, Iterator, List, Optional, Tuple

from trainer.data import gcs, photo_source, storage
from trainer.data.images import request_bytes, side_by_side
from trainer.errors import ConfigError, DataError, first_line


@dataclasses.dataclass(frozen=True)
class Photo:
    source: str  # a local path or gs:// object
    output: str  # '/'-separated, relative to the output folder
    size: int  # bytes, as listed


def _listed(path: str) -> Iterator[Tuple[str, str, int, bool]]:
    """(source, relative name, size, whether it was named by itself) of each file an INPUT stands for.

    A gs:// path is a prefix, or else one object; one that is neither is refused, as a missing file is.
    """
    if gcs.is_gcs(path):
        listed = False
        for name, size in photo_source.PhotoSource(path, recursive=True):
            listed = True
            yield storage.join(path, name), _safe(name, path), size, False
        if not listed:
            size = gcs.object_size(path)
            if size is None:
                raise ConfigError(f"{path}: no such object or prefix")
            yield path, posixpath.basename(path), size, True
    elif os.path.isdir(path):
        for name, size in photo_source.PhotoSource(path, recursive=True):
            yield os.path.join(path, name), name, size, False
    elif os.path.isfile(path):
        yield path, os.path.basename(path), os.path.getsize(path), True
    else:
        raise ConfigError(f"{path}: no such file or folder")


def _safe(name: str, where: str) -> str:
    """An object name as a relative output path: no part may climb out of the output folder."""
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ConfigError(f"{where}{name}: a name with an empty, '.' or '..' part can't name an output")
    return name


def output_names(relatives: List[str]) -> List[str]:
    """The naming rule: the extension replaced by .png, kept where two names would meet (whatever
    their case: `A.jpg` and `a.png` meet on a case-insensitive disk)."""
    stems = [posixpath.splitext(r)[0] for r in relatives]
    counts = collections.Counter(stem.lower() for stem in stems)
    return [(stem if counts[stem.lower()] == 1 else r) + ".png" for stem, r in zip(stems, relatives)]


def list_photos(
    inputs: List[str], num_tasks: int = 1, task_index: int = 0, output_dir: str = ""
) -> Tuple[List[Photo], list]:
    """This task's share of the photos under `inputs`, in a stable order, and the files left out of
    folders as not photos by name (`.DS_Store`, `notes.txt`). Files under `output_dir` are never
    inputs, so a rerun with the outputs inside an input folder doesn't colorize them."""
    found, ignored = [], []
    outputs = _under(output_dir) if output_dir else None
    for path in inputs:
        for source, relative, size, named in _listed(path):
            if outputs and _under(source).startswith(outputs):
                continue
            if named or photo_source.is_image(relative):
                found.append((source, relative, size))
            else:
                ignored.append(source)
    owners: dict = {}
    photos = []
    for (source, _, size), name in zip(found, output_names([r for _, r, _ in found])):
        if name.lower() in owners:
            raise ConfigError(f"{owners[name.lower()]} and {source} would both be written to {name}")
        owners[name.lower()] = source
        if photo_source.task_of(name, num_tasks) == task_index:
            photos.append(Photo(source, name, size))
    return photos, ignored


def _under(path: str) -> str:
    """A path as a prefix to compare folders by: absolute, '/'-terminated."""
    path = path if gcs.is_gcs(path) else os.path.abspath(path)
    return path.rstrip("/") + "/"


def read_photo(photo: Photo, max_pixels: int = 0) -> bytes:
    """The request bytes of a listed photo; files over photo_source.MAX_PHOTO_BYTES are not read."""
    if photo.size > photo_source.MAX_PHOTO_BYTES:
        size = photo_source.size_text(photo.size)
        raise DataError(f"{photo.source}: {size}, over the 64 MiB a photo file may have")
    try:
        if gcs.is_gcs(photo.source):
            data = gcs.read_bytes(photo.source)
        else:
            with open(photo.source, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        raise DataError(f"{photo.source}: {first_line(str(exc))}") from None
    return request_bytes(data, photo.source, max_pixels)


def existing_outputs(output_dir: str) -> Callable[[str], bool]:
    """`exists(relative output)`: one listing of a gs:// folder, a file check locally."""
    if gcs.is_gcs(output_dir):
        names = {name for name, _ in gcs.Listing(output_dir, recursive=True)}
        return names.__contains__
    return lambda relative: os.path.exists(os.path.join(output_dir, relative))


def write_output(output_dir: str, relative: str, data: bytes) -> str:
    """Writes an output whole (`storage.write_bytes`): one writer per output, as tasks' shares are
    disjoint, so a killed run's leftover `.partial` is replaced when the photo is done again."""
    target = storage.join(output_dir, *relative.split("/"))
    try:
        if not storage.is_gcs(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
        storage.write_bytes(target, data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"--output_dir={output_dir}: can't write {relative} ({reason})") from None
    return target


def check_output_dir(output_dir: str) -> None:
    """A local output folder can be created and written, before any photo is read or sent."""
    if gcs.is_gcs(output_dir):
        return  # the first upload names a missing bucket or permission in one line (gcs._explain)
    probe = os.path.join(output_dir, f".colorizer-write-check-{os.getpid()}")  # tasks share the folder
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"--output_dir={output_dir}: not writable ({exc.strerror or exc})") from None


@dataclasses.dataclass
class Summary:
    """What a run did; `skipped` holds (source, one-line reason)."""

    total: int = 0
    colorized: int = 0
    skipped: list = dataclasses.field(default_factory=list)


def predict_splitting(predict, items: list, bad_request) -> list:
    """[(item, png or None, reason or None)]: a refused batch is halved until each bad item fails
    alone. `bad_request(exc)` says whether an exception means the request's content was refused."""
    if not items:
        return []
    try:
        pngs = predict([data for _, data in items])
        return [(item, png, None) for (item, _), png in zip(items, pngs)]
    except Exception as exc:
        if not bad_request(exc):
            raise
        if len(items) == 1:
            return [(items[0][0], None, str(exc))]
        middle = len(items) // 2
        return predict_splitting(predict, items[:middle], bad_request) + predict_splitting(
            predict, items[middle:], bad_request
        )


def colorize_batch(
    predict, batch: List[Photo], output_dir: str, max_pixels: int, bad_request, pair: bool = False
) -> list:
    """[(photo, None or the reason it was skipped)] for one batch: read, predict, write (with
    `pair`, gray | colour side by side)."""
    ready, outcomes = [], []
    for photo in batch:
        try:
            ready.append((photo, read_photo(photo, max_pixels)))
        except DataError as exc:
            outcomes.append((photo, str(exc)))
    sent = {photo.output: data for photo, data in ready}
    for photo, png, reason in predict_splitting(predict, ready, bad_request):
        if png is not None:
            write_output(output_dir, photo.output, side_by_side(sent[photo.output], png) if pair else png)
        outcomes.append((photo, reason and f"{photo.source}: refused by serving ({reason})"))
    return outcomes


def run_batches(work: Callable, batches: list, parallel: int) -> Iterator:
    """work(batch) for every batch, `parallel` at a time, results in completion order; at most
    2 x parallel batches are read ahead, so memory stays bounded whatever the archive's size. An
    error cancels the batches not yet started."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        pending: set = set()
        try:
            for batch in batches:
                pending.add(pool.submit(work, batch))
                if len(pending) >= 2 * parallel:
                    done, pending = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                    yield from (future.result() for future in done)
            for future in concurrent.futures.as_completed(pending):
                yield future.result()
        finally:
            for future in pending:
                future.cancel()


def pending(photos: List[Photo], output_dir: str, overwrite: bool = False) -> List[Photo]:
    """The photos whose output is not written yet (all of them with `overwrite`)."""
    if overwrite:
        return list(photos)
    exists = existing_outputs(output_dir)
    return [photo for photo in photos if not exists(photo.output)]


def colorize_archive(
    predict,
    photos: List[Photo],
    output_dir: str,
    batch_size: int,
    parallel: int = 1,
    max_pixels: int = 0,
    bad_request=lambda exc: False,
    report: Optional[Callable] = None,
    pair: bool = False,
) -> Summary:
    """Colorizes `photos` (see `pending`) in batches; `report(photo, reason or None)` after each."""
    summary = Summary(total=len(photos))
    batches = [photos[start : start + batch_size] for start in range(0, len(photos), batch_size)]

    def work(batch):
        return colorize_batch(predict, batch, output_dir, max_pixels, bad_request, pair)

    for outcomes in run_batches(work, batches, parallel):
        for photo, reason in outcomes:
            if reason:
                summary.skipped.append((photo.source, reason))
            else:
                summary.colorized += 1
            if report:
                report(photo, reason)
    return summary
