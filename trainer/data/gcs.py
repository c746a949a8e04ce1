"""Cloud Storage writes for `trainer.prepare`, through google-cloud-storage.

Uploads are verified (CRC32C), resumable for large files, and guarded by generation
preconditions: an object is only created if it does not exist, or only replaced if it is still the
version this run listed, so two writers can't silently clobber each other. Credentials are
Application Default Credentials (Workload Identity on GKE); no key files.

It also lists and reads photos for `trainer.prepare --input_dir=gs://...`: listings stream page
by page (a bucket of millions starts being processed after its first page), and each decode
process reads objects through a client of its own.
"""

import concurrent.futures
import os
import uuid
from typing import Optional

from trainer.errors import ConfigError, DataError, TransientError, first_line

_RESUMABLE_CHUNK = 16 * 1024 * 1024  # files above this upload in resumable 16 MiB chunks


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def split_path(path: str):
    """gs://bucket/a/b -> ("bucket", "a/b")."""
    bucket, _, name = path[len("gs://") :].partition("/")
    if not bucket:
        raise DataError(f"{path}: no bucket name")
    return bucket, name


def _client():
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage  # imported on first use: local runs never need it

    try:
        return storage.Client()
    except auth_exceptions.DefaultCredentialsError as exc:
        raise ConfigError(
            f"no credentials for Cloud Storage ({first_line(exc)}); run `gcloud auth "
            "application-default login` or use Workload Identity"
        ) from None


def _api_errors():
    """What the client raises once its own retries are spent: API errors, and dropped connections."""
    import requests
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions

    return (
        exceptions.GoogleAPIError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        auth_exceptions.TransportError,
    )


def _explain(exc, path: str):
    """google.api_core and requests errors -> a one-line DataError, or TransientError for 429/5xx/network."""
    from google.api_core import exceptions

    transient = (
        exceptions.ServiceUnavailable,
        exceptions.TooManyRequests,
        exceptions.InternalServerError,
        exceptions.GatewayTimeout,
        exceptions.BadGateway,
        exceptions.RetryError,
    )
    if isinstance(exc, transient) or not isinstance(exc, exceptions.GoogleAPIError):
        return TransientError(
            f"{path}: Cloud Storage unavailable after retries ({type(exc).__name__}: "
            f"{first_line(exc)}); a retry may succeed"
        )
    if isinstance(exc, exceptions.NotFound):
        return DataError(f"{path}: not found (does the bucket gs://{split_path(path)[0]} exist?)")
    if isinstance(exc, exceptions.Forbidden):
        return ConfigError(
            f"{path}: permission denied; this identity's role on the path's prefix doesn't allow it "
            "(docs/KUBERNETES.md, IAM)"
        )
    if isinstance(exc, exceptions.PreconditionFailed):
        return DataError(
            f"{path}: changed by another writer while this run was writing; nothing was overwritten"
        )
    if isinstance(exc, exceptions.Unauthorized):
        return DataError(f"{path}: no valid credentials (run `gcloud auth application-default login`)")
    return DataError(f"{path}: {type(exc).__name__}: {first_line(exc)}")


def check_writable(directory: str) -> None:
    """Creates and deletes a probe object in `directory` the way shards are uploaded, before any work."""
    bucket, name = split_path(directory.rstrip("/") + f"/.colorizer-probe-{uuid.uuid4().hex[:8]}")
    try:
        blob = _client().bucket(bucket).blob(name)
        blob.upload_from_string(b"colorizer write check\n", checksum="crc32c", if_generation_match=0)
        blob.delete()
    except _api_errors() as exc:
        raise _explain(exc, directory) from None


class Listing:
    """Iterates (name relative to `directory`, size) of the objects under it, one page at a time.

    Without `recursive`, objects in subfolders are not listed; `subfolders` counts those skipped.
    """

    def __init__(self, directory: str, recursive: bool, page_size: int = 1000):
        self.directory, self.recursive, self.page_size, self.subfolders = directory, recursive, page_size, 0

    def __iter__(self):
        bucket, prefix = split_path(self.directory.rstrip("/") + "/")
        prefix = "" if prefix == "/" else prefix
        try:
            blobs = _client().list_blobs(
                bucket,
                prefix=prefix,
                delimiter=None if self.recursive else "/",
                page_size=self.page_size,
                fields="items(name,size),prefixes,nextPageToken",
            )
            for page in blobs.pages:
                self.subfolders += len(page.prefixes)
                for blob in page:
                    if not blob.name.endswith("/"):  # folder placeholders of the console
                        yield blob.name[len(prefix) :], blob.size or 0
        except _api_errors() as exc:
            raise _explain(exc, self.directory) from None


_PROCESS_CLIENT: dict = {}


def _process_client():
    """One client per process (created on first use; a forked worker makes its own)."""
    if os.getpid() not in _PROCESS_CLIENT:
        _PROCESS_CLIENT.clear()
        _PROCESS_CLIENT[os.getpid()] = _client()
    return _PROCESS_CLIENT[os.getpid()]


def read_bytes(path: str) -> bytes:
    """An object's bytes through this process's own client (decode workers are separate processes).

    A missing object is FileNotFoundError (prepare skips and names it); other failures are the
    one-line errors of `_explain` (a transient one stops the run: a photo is never silently dropped).
    """
    from google.api_core import exceptions

    bucket, name = split_path(path)
    try:
        return _process_client().bucket(bucket).blob(name).download_as_bytes()
    except exceptions.NotFound:
        raise FileNotFoundError(f"{path}: no such object") from None
    except _api_errors() as exc:
        raise _explain(exc, path) from None


def read_text(path: str):
    """(text, generation) of a small object, or (None, 0) if it does not exist."""
    from google.api_core import exceptions

    bucket, name = split_path(path)
    for _ in range(5):  # replaced between the metadata read and the download: read the new one
        try:
            blob = _client().bucket(bucket).get_blob(name)
            if blob is None:
                return None, 0
            return blob.download_as_bytes(if_generation_match=blob.generation).decode(
                "utf-8"
            ), blob.generation
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            continue
        except _api_errors() as exc:
            raise _explain(exc, path) from None
    raise DataError(f"{path}: kept changing while being read")


def object_size(path: str):
    """The size of the object at `path`, or None if there is none."""
    bucket, name = split_path(path)
    try:
        blob = _process_client().bucket(bucket).get_blob(name) if name else None
    except _api_errors() as exc:
        raise _explain(exc, path) from None
    return None if blob is None else int(blob.size or 0)


def write_bytes(path: str, data: bytes, generation: Optional[int] = None) -> int:
    """Writes an object in one upload (whole or not at all), only if it still has `generation`
    (0: only if absent; None: whatever is there). Returns the new generation, 0 if someone else
    wrote it first."""
    from google.api_core import exceptions

    bucket, name = split_path(path)
    try:
        blob = _process_client().bucket(bucket).blob(name)
        blob.upload_from_string(data, checksum="crc32c", if_generation_match=generation)
        return int(blob.generation or 1)
    except exceptions.PreconditionFailed:
        return 0
    except _api_errors() as exc:
        raise _explain(exc, path) from None


def list_generations(directory: str, prefix: str) -> dict:
    """{object path: generation} of the objects in `directory` whose names start with `prefix`."""
    bucket, name = split_path(directory.rstrip("/") + "/")
    try:
        blobs = _client().list_blobs(bucket, prefix=name + prefix, delimiter="/")
        return {f"gs://{bucket}/{b.name}": b.generation for b in blobs}
    except _api_errors() as exc:
        raise _explain(exc, directory) from None


def upload(pairs, expected: dict, workers: int = 8) -> None:
    """Uploads [(local file, gs:// path)] in parallel.

    `expected` maps a destination to the generation it must still have; a destination not in it
    must not exist yet (generation 0).
    """
    client = _client()

    def one(pair):
        local, remote = pair
        bucket, name = split_path(remote)
        chunk = _RESUMABLE_CHUNK if os.path.getsize(local) > _RESUMABLE_CHUNK else None
        blob = client.bucket(bucket).blob(name, chunk_size=chunk)
        blob.upload_from_filename(local, checksum="crc32c", if_generation_match=expected.get(remote, 0))

    _run_all(one, pairs, workers, lambda pair: pair[1])


def delete(paths: dict, workers: int = 8, missing_ok: bool = False) -> None:
    """Deletes {gs:// path: generation}, each only if it is still that generation."""
    from google.api_core import exceptions

    client = _client()

    def one(item):
        bucket, name = split_path(item[0])
        try:
            client.bucket(bucket).blob(name).delete(if_generation_match=item[1])
        except exceptions.NotFound:
            if not missing_ok:
                raise

    _run_all(one, list(paths.items()), workers, lambda item: item[0])


def _run_all(function, items, workers: int, path_of) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(function, item): item for item in items}
        for future in concurrent.futures.as_completed(futures):
            try:
                future.result()
            except _api_errors() as exc:
                raise _explain(exc, path_of(futures[future])) from None
