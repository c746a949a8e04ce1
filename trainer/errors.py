"""Errors that CLIs turn into a one-line message and a documented exit code instead of a traceback.

The exit codes are a contract with the cluster (k8s/ podFailurePolicy, TFJob's ExitCode policy,
docs/KUBERNETES.md "Exit codes"): user errors are permanent and fail a Job at once; codes >= 128
are retriable (TFJob's rule) and mean "a restart resumes from the last checkpoint".
"""

import contextlib
import sys

EXIT_UNEXPECTED = 1  # an uncaught exception (Python's own code): counts against the Job's backoffLimit
EXIT_CONFIG = 2  # bad flags or configuration: permanent, a restart would fail the same way
EXIT_DATA = 3  # input data missing, incomplete or corrupt: permanent
EXIT_DIVERGED = 4  # the loss became NaN or infinite: nothing exported; a restart would diverge again
EXIT_SKIPPED = 5  # trainer.client finished, but some photos could not be colorized (each named)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: stopped on a signal (this worker's or a peer's), checkpoint saved
EXIT_PEER_LOST = 144  # a peer worker died or stopped answering; restarting all workers resumes
EXIT_TRANSIENT = 145  # infrastructure trouble that outlasted the retries (storage 5xx, a peer not up yet)
PERMANENT_EXIT_CODES = (EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED)
RETRIABLE_EXIT_CODES = (EXIT_PREEMPTED, EXIT_PEER_LOST, EXIT_TRANSIENT)


class ColorizerError(Exception):
    """Base class: a problem with the user's input, not a bug in the program."""

    exit_code = EXIT_DATA


class ConfigError(ColorizerError):
    """A flag or combination of flags is invalid."""

    exit_code = EXIT_CONFIG


class DataError(ColorizerError):
    """Input data is missing, incomplete or corrupt."""

    exit_code = EXIT_DATA


class DivergedError(ColorizerError):
    """Training loss or validation loss became NaN or infinite: the weights are unusable."""

    exit_code = EXIT_DIVERGED


class TransientError(ColorizerError):
    """Infrastructure trouble that retries did not outlast (storage unavailable, a peer not scheduled yet)."""

    exit_code = EXIT_TRANSIENT


class StoppedError(ColorizerError):
    """Stopped by SIGTERM before there was anything to save (e.g. while waiting for peers)."""

    exit_code = EXIT_PREEMPTED


@contextlib.contextmanager
def exit_on_user_error():
    """For CLI mains: a ColorizerError becomes `error: ...` on stderr and its class's exit code."""
    try:
        yield
    except ColorizerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def first_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of an error message (TF's and HTTP errors span many), shortened."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def transient_storage_errors() -> tuple:
    """The tf.errors that storage raises once TF's own retries are spent (see storage_errors)."""
    import tensorflow as tf

    return (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.ResourceExhaustedError,
        tf.errors.InternalError,
        tf.errors.AbortedError,
    )


@contextlib.contextmanager
def storage_errors(what: str, permanent=None):
    """File I/O through tf.io on `what`: trouble that outlasted TF's own retries -> TransientError.

    TF's GCS filesystem retries 5xx, 429 and timeouts itself, then raises AbortedError ("All 10
    retry attempts failed", tsl/platform/retrying_utils.cc); so Aborted counts as transient here
    too. A missing object or a denied permission raises `permanent` when given, else passes through.
    """
    import tensorflow as tf

    try:
        yield
    except transient_storage_errors() as exc:
        raise TransientError(
            f"{what}: storage unavailable after retries ({type(exc).__name__}: "
            f"{first_line(exc.message)}); a restart resumes"
        ) from None
    except (tf.errors.NotFoundError, tf.errors.PermissionDeniedError, tf.errors.UnauthenticatedError) as exc:
        if permanent is None:
            raise
        raise permanent(f"{what}: {first_line(exc.message)}") from None


def parse_flags_or_exit(argv):
    """`flags_parser` for absl's app.run: a bad flag is one line and EXIT_CONFIG (absl itself exits 1)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
