"""What a user's terminal shows: the run's own progress, without TensorFlow's start-up chatter.

TF 2.21's native libraries print oneDNN, CUDA and CPU-feature notices straight to file descriptor
2 before absl::InitializeLog, whatever TF_CPP_MIN_LOG_LEVEL says (abseil PR #1957), once at import
and once when the devices are first listed; and TF's Python modules log INFO records (checkpoint
sharding, signature renames, asset writes) that a user can't act on. `quiet_tensorflow` hides
exactly those; errors, warnings and this package's own records pass. Only the CLIs call it, and
only when the user hasn't asked for TF's logs (--verbosity, or TF_CPP_MIN_LOG_LEVEL set).
"""

import contextlib
import datetime
import json
import logging
import os
import re
import signal
import sys
import threading
import time

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
    """absl's records as JSON lines; with json_logs_process, the rest of stderr is converted."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().setFormatter(JsonFormatter())


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


@contextlib.contextmanager
def filtered_fd2(noise=NATIVE_NOISE):
    """Runs the block with everything written to fd 2 passed through a line filter dropping `noise`.

    On leaving, fd 2 is restored and the filter drains what is left, so no line is lost.
    """
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not noise.search(line.decode("utf-8", "replace")):
                    os.write(original, line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the thread reads to the end and stops
        thread.join(timeout=5)
        os.close(original)


def json_logs_process() -> None:
    """--log_format=json: the run goes on in a forked child whose fd 2 is a pipe; this process turns
    each line into JSON (json_line) until the child ends, then exits with its status (128 + N for
    signal N). A child that dies, even by abort() after a fatal message, leaves that message in the
    pipe, and it is converted all the same: as PID 1 of a container this process outlives it.
    SIGTERM and SIGINT are passed on to the child. Call it before TensorFlow starts any thread."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.dup2(write_end, 2)
        os.close(write_end)
        return
    os.close(write_end)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda received, _: os.kill(child, received))
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            os.write(2, (json_line(raw.decode("utf-8", "replace")) + "\n").encode())
    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    os._exit(code if code >= 0 else 128 - code)


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


class PhotoProgress:
    """A tqdm bar with rate and ETA on a terminal, else a line every `seconds`; each
    skipped photo is named as it happens."""

    def __init__(self, total: int, seconds: float, stream=None):
        self.stream, self.seconds = stream or sys.stderr, seconds
        self.total, self.done, self.skipped = total, 0, 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="photo", file=self.stream, dynamic_ncols=True)

    def __call__(self, photo, reason) -> None:
        self.done += 1
        if reason:
            self.skipped += 1
            self._write(f"skipped {reason}")
        if self.bar is not None:
            self.bar.update(1)
        elif time.monotonic() - self.last >= self.seconds:
            self.last = time.monotonic()
            self._write(self.line())

    def line(self) -> str:
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate else 0.0
        return (
            f"{self.done}/{self.total} photos ({self.skipped} skipped), {rate:.1f} photos/s, "
            f"ETA {eta / 60:.0f} min"
        )

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
