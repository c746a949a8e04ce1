"""What a user's terminal shows: the run's own progress, without TensorFlow's start-up chatter.

TF 2.21's native libraries print oneDNN, CUDA and CPU-feature notices straight to file descriptor
2 before absl::InitializeLog, whatever TF_CPP_MIN_LOG_LEVEL says (abseil PR #1957), once at import
and once when the devices are first listed; and TF's Python modules log INFO records (checkpoint
sharding, signature renames, asset writes) that a user can't act on. `quiet_tensorflow` hides
exactly those; errors, warnings and this package's own records pass. Only the CLIs call it, and
only when the user hasn't asked for TF's logs (--verbosity, or TF_CPP_MIN_LOG_LEVEL set).
"""

import atexit
import contextlib
import datetime
import json
import logging
import os
import re
import sys
import threading

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Lines of TF's native start-up that say nothing actionable (a CPU machine has no CUDA by design).
NATIVE_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|\] oneDNN custom operations are on|cudart_stub\.cc|"
    r"cpu_feature_guard\.cc|^To enable the following instructions|"
    r"cuda_platform\.cc:\d+\] failed call to cuInit|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc|TF-TRT Warning"
)


# Python's level names that are also Cloud Logging severities (google/logging/type/log_severity.proto).
SEVERITIES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, as Cloud Logging reads a container's lines: severity, message,
    time, source location, and the record's `fields` (extra={"fields": {...}}) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        entry = {
            "severity": record.levelname if record.levelname in SEVERITIES else "DEFAULT",
            "message": message,
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname,
                "line": record.lineno,
                "function": record.funcName,
            },
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def use_json_logs() -> None:
    """Every line on stderr as JSON: absl's records formatted as such, the rest converted (json_fd2)."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().setFormatter(JsonFormatter())
    json_fd2()


def wants_quiet(verbosity_flag_present: bool, environ) -> bool:
    """Quiet unless the user asked for TF's logs: --verbosity given, or TF_CPP_MIN_LOG_LEVEL set."""
    return not verbosity_flag_present and "TF_CPP_MIN_LOG_LEVEL" not in environ


class _PackageOrWarnings(logging.Filter):
    """Passes WARNING and above from anyone, INFO and below only from this package."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


# TensorFlow's native log lines: severity letter, date, time, thread, file:line], message.
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^:\]]+):(\d+)\] ?(.*)$")
_NATIVE_SEVERITY = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}


def json_line(line: str) -> str:
    """A line written to fd 2 as one JSON log line: a JSON line as it is, a TensorFlow native line
    with its own severity and source, anything else (an `error:` line, a traceback) as ERROR."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            json.loads(line)
            return line
        except ValueError:
            pass
    native = _NATIVE_LINE.match(line)
    if not native:
        return json.dumps({"severity": "ERROR", "message": line})
    letter, file, number, message = native.groups()
    location = {"file": file, "line": int(number)}
    return json.dumps(
        {
            "severity": _NATIVE_SEVERITY[letter],
            "message": message,
            "logging.googleapis.com/sourceLocation": location,
        }
    )


class _Fd2Forwarder:
    """Passes every line written to fd 2 through `noise` (dropped) and `transform`, on a thread."""

    def __init__(self, noise, transform):
        sys.stderr.flush()
        self.original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(target=self._forward, args=(read_end, noise, transform), daemon=True)
        self.thread.start()

    def _forward(self, read_end, noise, transform):
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace")
                if not (noise and noise.search(line)):
                    os.write(self.original, (transform(line) + "\n").encode() if transform else raw)

    def close(self) -> None:
        """Restores fd 2; the thread reads what is left and stops, so no line is lost."""
        if self.original is None:
            return
        sys.stderr.flush()
        os.dup2(self.original, 2)  # closes the pipe's last write end: the thread reads to the end
        self.thread.join(timeout=5)
        os.close(self.original)
        self.original = None


_JSON_FD2: list = []  # the whole-run forwarder of --log_format=json, closed by close_json_fd2


@contextlib.contextmanager
def filtered_fd2(noise=NATIVE_NOISE):
    """Runs the block with everything written to fd 2 passed through a line filter dropping `noise`.

    On leaving, fd 2 is restored and the filter drains what is left, so no line is lost.
    """
    forwarder = _Fd2Forwarder(noise, None)
    try:
        yield
    finally:
        forwarder.close()


def json_fd2() -> None:
    """From now on every line on fd 2 (TensorFlow's native logs, tracebacks, `error:` lines) reaches
    stderr as a JSON log line. `close_json_fd2` (at exit, and before os._exit) drains it; a hard
    crash may lose the line being converted, which a plain-text log would keep."""
    if not _JSON_FD2:
        _JSON_FD2.append(_Fd2Forwarder(None, json_line))
        atexit.register(close_json_fd2)


def close_json_fd2() -> None:
    for forwarder in _JSON_FD2:
        forwarder.close()


def report(text: str, json_format: bool) -> None:
    """A result line on stdout (the commands a run prints at its end): plain, or a JSON INFO line."""
    print(json.dumps({"severity": "INFO", "message": text}) if json_format else text, flush=True)


def quiet_tensorflow(environ=os.environ):
    """Imports TensorFlow and initialises its devices with the start-up notices hidden; quiets TF's INFO.

    Call before anything imports TensorFlow. Returns the tensorflow module.
    """
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # native INFO after start-up; warnings pass
    with filtered_fd2():
        import tensorflow as tf

        tf.config.list_physical_devices()
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_PackageOrWarnings())
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # its own handler prints INFO:tensorflow: lines
    return tf
