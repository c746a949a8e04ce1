"""The fork server's children behave as `python -m MODULE` processes would (tests/forkserver.py)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests import forkserver

pytestmark = pytest.mark.system  # a server process with TensorFlow imported

PROBE = """
import json, os, sys, tempfile
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "path0": sys.path[0], "pid": os.getpid(),
                  "sid": os.getsid(0), "tmp": tempfile.gettempdir(), "name": __name__,
                  "tf": "tensorflow" in sys.modules, "extra": os.environ.get("PROBE_EXTRA")}))
print("to stderr", file=sys.stderr)
if sys.argv[1:] == ["sleep"]:
    import time
    time.sleep(60)
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "scratch").mkdir()
    return tmp_path


def test_a_forked_command_has_its_own_argv_cwd_environment_streams_and_exit_code(probe):
    env = {**forkserver.ENV, "PROBE_EXTRA": "x", "PROBE_EXIT": "3", "TMPDIR": str(probe / "scratch")}
    run = forkserver.run("probe", ["--flag=1", "more"], env, cwd=probe)
    seen = json.loads(run.stdout)
    assert run.returncode == 3 and run.stderr == "to stderr\n"
    assert seen["tf"], "forked from the server (TensorFlow already imported), not started afresh"
    assert seen["argv"] == ["--flag=1", "more"] and seen["name"] == "__main__"
    assert seen["cwd"] == seen["path0"] == str(probe)  # `python -m` puts the working folder first
    assert seen["extra"] == "x" and seen["tmp"] == str(probe / "scratch")
    assert seen["pid"] != os.getpid()


def test_signals_reach_the_command_and_its_death_reads_as_popen_s(probe, tmp_path):
    with open(tmp_path / "out", "w") as out:
        process = forkserver.start("probe", ["sleep"], forkserver.ENV, probe, stdout=out, new_session=True)
    assert isinstance(process, forkserver.Process) and process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert json.loads((tmp_path / "out").read_text().splitlines()[0])["sid"] == process.pid
    process.kill()  # after the end: nothing to signal, no error (as Popen)


def test_start_up_settings_and_json_logs_run_as_plain_subprocesses(probe, tmp_path):
    quiet = {**forkserver.ENV, "TF_CPP_MIN_LOG_LEVEL": "0"}  # read while TensorFlow starts
    assert not json.loads(forkserver.run("probe", [], quiet, cwd=probe).stdout)["tf"]
    with open(tmp_path / "json.out", "w") as out:  # its converter forks before TensorFlow is imported
        args = ["--log_format=json"]
        plain = forkserver.start("probe", args, forkserver.ENV, probe, out, subprocess.STDOUT)
    assert isinstance(plain, subprocess.Popen) and plain.wait(timeout=60) == 0


def test_python_dash_c_and_a_script_are_forked_with_their_argv(probe, tmp_path):
    code = "import json, sys; print(json.dumps([sys.argv, sys.path[0], 'tensorflow' in sys.modules]))"
    code += "; sys.exit(4)"
    run = forkserver.run(None, ("-c", code, "a", "b"), forkserver.ENV, cwd=tmp_path)  # a tuple, as *args
    assert run.returncode == 4 and json.loads(run.stdout) == [["-c", "a", "b"], "", True]
    script = forkserver.run(None, ("probe.py", "x"), {**forkserver.ENV, "PROBE_EXIT": "5"}, cwd=probe)
    seen = json.loads(script.stdout.splitlines()[0])
    assert script.returncode == 5 and seen["tf"] and seen["name"] == "__main__"
    assert seen["argv"] == ["x"] and seen["path0"] == str(probe)  # the script's folder, as `python SCRIPT`


def test_a_module_that_fails_on_import_prints_its_traceback_and_exits_1(tmp_path):
    (tmp_path / "broken.py").write_text("raise ValueError('broken on purpose')\n")
    run = forkserver.run("broken", [], forkserver.ENV, cwd=tmp_path)
    assert run.returncode == 1 and "ValueError: broken on purpose" in run.stderr
    assert sys.executable in run.args
