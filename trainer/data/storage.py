"""Where the project reads and writes small files: local folders and gs:// prefixes behind one
small interface.

Two clients, because two kinds of caller: `trainer.prepare`, its tasks and the archive client go
through google-cloud-storage (`trainer.data.gcs`: verified, precondition-guarded uploads, and no
TensorFlow, so the HTTP client stays light); the trainer's checkpoints, summaries and exports go
through TensorFlow's file systems, which TF's own savers use (`check_writable` .. `read_json`,
importing TensorFlow when called).

Every small file carries a generation: a gs:// object's own, 1 for a local file that exists, 0 for
one that doesn't. A write names the generation it expects (0: only if absent; None: replace
whatever is there) and returns the new one, or 0 when someone else changed the file first, so two
writers never silently clobber each other. Local writes are whole or absent: a temporary file is
renamed (or, for create-if-absent, hard-linked) into place.
"""

import json
import os
import posixpath
import uuid
from typing import Optional

from absl import logging

from trainer.data import gcs
from trainer.errors import ConfigError, TransientError, first_line, transient_storage_errors

is_gcs = gcs.is_gcs
PARTIAL = ".partial"  # an unconditional local write's temporary name: the next writer replaces a leftover


def join(directory: str, *names: str) -> str:
    return posixpath.join(directory, *names) if is_gcs(directory) else os.path.join(directory, *names)


def read_text(path: str) -> tuple:
    """(text, generation) of a small file, or (None, 0) if there is none."""
    if is_gcs(path):
        return gcs.read_text(path)
    if not os.path.exists(path):
        return None, 0
    with open(path, encoding="utf-8") as handle:
        return handle.read(), 1


def write_text(path: str, text: str, generation: Optional[int] = None) -> int:
    """Writes `text` whole if `path` still has `generation` (0: only if absent; None: unconditionally).

    Returns the new generation, or 0 when the precondition failed (someone else wrote it).
    """
    return write_bytes(path, text.encode("utf-8"), generation)


def write_bytes(path: str, data: bytes, generation: Optional[int] = None) -> int:
    """`write_text` for bytes. Guarded local writes race other writers, so each has its own temporary."""
    if is_gcs(path):
        return gcs.write_bytes(path, data, generation)
    tmp = path + PARTIAL if generation is None else f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    try:
        if generation == 0:
            os.link(tmp, path)  # atomic create-if-absent
        else:
            os.replace(tmp, path)
        return 1
    except FileExistsError:
        return 0
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_generations(directory: str, prefix: str = "") -> dict:
    """{path: generation} of the files directly in `directory` whose names start with `prefix`, sorted."""
    if is_gcs(directory):
        return dict(sorted(gcs.list_generations(directory, prefix).items()))
    if not os.path.isdir(directory):
        return {}
    names = sorted(n for n in os.listdir(directory) if n.startswith(prefix))
    return {posixpath.join(directory, n): 1 for n in names if os.path.isfile(os.path.join(directory, n))}


def delete(paths: dict) -> None:
    """Deletes {path: generation}; a gs:// object only if it still has that generation. Gone is fine."""
    remote = {p: g for p, g in paths.items() if is_gcs(p)}
    if remote:
        gcs.delete(remote, missing_ok=True)
    for path in (p for p in paths if not is_gcs(p)):
        if os.path.exists(path):
            os.remove(path)


# Why two roles: TF creates folders up to the bucket, and that asks for the bucket's metadata
# (tests/test_iam.py; docs/KUBERNETES.md, IAM).
GCS_ROLES_HINT = (
    "writing takes roles/storage.objectUser on the path's prefix and roles/storage.legacyBucketReader "
    "on the bucket (docs/KUBERNETES.md, IAM)"
)


def _reason(exc: Exception) -> str:
    return first_line(getattr(exc, "message", exc), 200) or type(exc).__name__


def check_writable(flag: str, path: str, worker: str = "0") -> None:
    """Creates `path` the way checkpoints, summaries and exports do, and writes and deletes a probe
    object in it: a run that can't export must not find out after hours of GPU time. ConfigError
    names the flag if not."""
    import tensorflow as tf

    probe = os.path.join(path, f".colorizer-probe-{worker}-{uuid.uuid4().hex[:8]}")
    try:
        tf.io.gfile.makedirs(path)
        with tf.io.gfile.GFile(probe, "w") as handle:
            handle.write("colorizer write check\n")
        tf.io.gfile.remove(probe)
    except transient_storage_errors() as exc:
        raise TransientError(f"--{flag}={path}: storage unavailable ({_reason(exc)})") from None
    except tf.errors.PermissionDeniedError as exc:
        hint = f"; {GCS_ROLES_HINT}" if path.startswith("gs://") else ""
        raise ConfigError(f"--{flag}={path}: permission denied ({_reason(exc)}){hint}") from None
    except (tf.errors.OpError, OSError) as exc:
        raise ConfigError(f"--{flag}={path}: not writable ({_reason(exc)})") from None


def write_text_verified(path: str, text: str, attempts: int = 3) -> None:
    """Writes a small text object and reads it back: under storage faults TF's GCS writer has been
    seen to finish an upload as an empty object without raising (tests/test_gcs.py)."""
    import tensorflow as tf

    for attempt in range(1, attempts + 1):
        with tf.io.gfile.GFile(path, "w") as handle:
            handle.write(text)
        with tf.io.gfile.GFile(path) as handle:
            if handle.read() == text:
                return
        logging.warning(
            "%s read back differently after writing it (attempt %d of %d)", path, attempt, attempts
        )
    raise TransientError(f"{path}: written {attempts} times, never read back intact")


def replace_text(path: str, text: str) -> None:
    """Replaces a small file so that no reader sees it half-written: a local one through `write_text`
    (renamed into place), a gs:// object through TF's file system, whose upload is all or nothing."""
    if not is_gcs(path):
        write_text(path, text)
        return
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(text)


def read_json(path: str):
    """The JSON object at `path`; None if there is none or it doesn't parse (a half-written one)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        text = handle.read()
    try:
        return json.loads(text)
    except ValueError:
        logging.warning("%s is not valid JSON (%d bytes): ignored", path, len(text))
        return None


def check_outputs(locations: dict, worker: str = "0") -> None:
    """check_writable for each {flag: path}, in order; the first failure is raised."""
    for flag, path in locations.items():
        check_writable(flag, path, worker)
