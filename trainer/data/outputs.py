"""Proves, before a run builds its model, that every output location can be written as the run will.

A run that can't export must not find out after hours of GPU time: each location is created with
the same call checkpoints, summaries and exports use (`tf.io.gfile.makedirs`), and a small probe
object is written and removed there, on every worker.
"""

import json
import os
import uuid

import tensorflow as tf
from absl import logging

from trainer.errors import ConfigError, TransientError, first_line, transient_storage_errors

# Why two roles: TF creates folders up to the bucket, and that asks for the bucket's metadata
# (tests/test_iam.py; docs/KUBERNETES.md, IAM).
GCS_ROLES_HINT = (
    "writing takes roles/storage.objectUser on the path's prefix and roles/storage.legacyBucketReader "
    "on the bucket (docs/KUBERNETES.md, IAM)"
)


def _reason(exc: Exception) -> str:
    return first_line(getattr(exc, "message", exc), 200) or type(exc).__name__


def check_writable(flag: str, path: str, worker: str = "0") -> None:
    """Creates `path` and writes and deletes a probe object in it; ConfigError names the flag if not."""
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


def read_json(path: str):
    """The JSON object at `path`; None if there is none or it doesn't parse (a half-written one)."""
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
