"""Proves, before a run builds its model, that every output location can be written as the run will.

A run that can't export must not find out after hours of GPU time: each location is created with
the same call checkpoints, summaries and exports use (`tf.io.gfile.makedirs`), and a small probe
object is written and removed there, on every worker.
"""

import os
import uuid

import tensorflow as tf

from trainer.errors import ConfigError, TransientError, transient_storage_errors


def _reason(exc: Exception) -> str:
    lines = str(getattr(exc, "message", exc)).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


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
        raise ConfigError(f"--{flag}={path}: permission denied ({_reason(exc)})") from None
    except (tf.errors.OpError, OSError) as exc:
        raise ConfigError(f"--{flag}={path}: not writable ({_reason(exc)})") from None


def check_outputs(locations: dict, worker: str = "0") -> None:
    """check_writable for each {flag: path}, in order; the first failure is raised."""
    for flag, path in locations.items():
        check_writable(flag, path, worker)
