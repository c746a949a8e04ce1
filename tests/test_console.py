import json
import os
import re
import subprocess
import sys

from tests.conftest import REPO
from trainer import console

_WRITE_THROUGH_FD2 = """
import os, sys
from trainer import console
with console.filtered_fd2():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    os.write(2, b"I0000 00:00:1.0  1 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n")
    os.write(2, b"E0000 00:00:1.0  1 real_op.cc:7] something a user must see\\n")
    print("python's own stderr passes too", file=sys.stderr)
    os.write(2, b"E0000 00:00:1.0  1 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n")
os.write(2, b"after the block\\n")
"""


def test_filtered_fd2_drops_only_the_start_up_notices():
    run = subprocess.run(
        [sys.executable, "-c", _WRITE_THROUGH_FD2], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        "E0000 00:00:1.0  1 real_op.cc:7] something a user must see",
        "python's own stderr passes too",
        "after the block",
    ]


_NATIVE_WARNING_AFTER_START_UP = """
import os
from trainer import console
tf = console.quiet_tensorflow(os.environ)
try:
    tf.io.decode_png(b"not a png")  # TF's kernels log a failed op as a native WARNING
except tf.errors.InvalidArgumentError:
    pass
"""


def test_quiet_tensorflow_hides_the_start_up_notices_but_not_a_later_native_warning():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run(
        [sys.executable, "-c", _NATIVE_WARNING_AFTER_START_UP],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"^W\d{4} .*Unknown image file format", run.stderr, re.M), run.stderr
    assert not console.NATIVE_NOISE.search(run.stderr), run.stderr


def test_every_line_on_fd2_becomes_a_json_log_line_with_a_severity():
    native = "W0000 00:00:1796438735.26 32525 local_rendezvous.cc:412] Local rendezvous is aborting"
    assert json.loads(console.json_line(native + "\n")) == {
        "severity": "WARNING",
        "message": "Local rendezvous is aborting",
        "logging.googleapis.com/sourceLocation": {"file": "local_rendezvous.cc", "line": 412},
    }
    assert json.loads(console.json_line("error: --epochs=0: must be at least 1")) == {
        "severity": "ERROR",
        "message": "error: --epochs=0: must be at least 1",
    }
    already = json.dumps({"severity": "INFO", "message": "epoch 1/2"})
    assert console.json_line(already + "\n") == already


_FATAL_AFTER_JSON = """
import os
from trainer import console
console.json_logs_process()
os.write(2, b"F0000 00:00:1.0  7 collective.cc:99] Check failed: peers agree\\n")
os.abort()  # as TensorFlow's LOG(FATAL) ends
"""


def test_a_fatal_message_right_before_abort_reaches_the_json_log_and_the_exit_code_says_so():
    run = subprocess.run([sys.executable, "-c", _FATAL_AFTER_JSON], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 128 + 6, run.stderr  # SIGABRT, as a shell reports it
    [record] = [json.loads(line) for line in run.stderr.splitlines()]
    assert record["severity"] == "CRITICAL" and record["message"] == "Check failed: peers agree"


def test_quiet_only_when_the_user_asked_for_nothing():
    assert console.wants_quiet(False, {})
    assert not console.wants_quiet(True, {})  # --verbosity given
    assert not console.wants_quiet(False, {"TF_CPP_MIN_LOG_LEVEL": "0"})


def test_package_records_and_warnings_pass_the_filter():
    import logging

    keep = console._PackageOrWarnings().filter
    ours = logging.LogRecord("absl", logging.INFO, f"{console._PACKAGE_DIR}/train.py", 1, "epoch", None, None)
    theirs = logging.LogRecord(
        "absl", logging.INFO, "/site-packages/tensorflow/functional_saver.py", 1, "x", None, None
    )
    warning = logging.LogRecord("absl", logging.WARNING, "/site-packages/tensorflow/x.py", 1, "x", None, None)
    assert keep(ours) and not keep(theirs) and keep(warning)
