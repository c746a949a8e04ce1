"""The CLIs' real processes, forked from an interpreter that has already imported TensorFlow.

A CLI test pays about 3 s of CPU for Python and TensorFlow to start before the command's first line
runs; the suite starts dozens. Each pytest worker starts a server (`python tests/forkserver.py`; one
more inside each GCS emulator's mount namespace) that imports TensorFlow, Keras and the trainer's
library modules, and then forks a child per command:
a real process with its own pid, environment, working directory, stdout/stderr, signals and exit
code, running `python -m MODULE ARGS` (or `python -c CODE`, `python SCRIPT.py`) from its `__main__`
on. Only the start-up is shared.

A command whose environment differs from ENV in something read while Python or TensorFlow starts
(`IMPORT_TIME`: a test of start-up itself), or that logs JSON, runs as a plain subprocess:
`run` and `start` fall back to `subprocess` on their own, and so does everything when the server
can't start.
"""

import atexit
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CLI tests' usual environment. TF's GCS retries wait 0.1 s doubling to 1 s, not 1 s doubling to
# 32 s: the tests' GCS emulator answers at once, and its fault tests stay short.
ENV = {
    **os.environ,
    "PYTHONPATH": REPO,
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "100000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000",
}
# Environment read once, while TensorFlow (or Python) starts: a command must agree with the server on these.
IMPORT_TIME = ("PYTHON", "TF_CPP_", "TF_ENABLE_", "CUDA_", "XLA_", "OMP_", "MKL_", "KMP_", "LD_", "GCS_")
# Modules preloaded by the server: TensorFlow and the trainer's library, not the CLI modules that
# define their flags on import (each child imports its own command, as `python -m` would).
PRELOAD = (
    "tensorflow",
    "keras",
    "trainer.data.prepare",
    "trainer.serve.archive",
    "trainer.serve.export",
    "trainer.train.distribute",
    "trainer.train.preemption",
    "trainer.train.run",
)


def _import_time(env) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME)}


# ---- the server -------------------------------------------------------------------------------


def _child(sockets, request, fds) -> None:
    """In the forked child: becomes `python -m MODULE ARGS` in the request's world; never returns."""
    for open_socket in sockets:  # the server's: its listener and the other commands' connections
        open_socket.close()
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # `random` reseeds itself after a fork; numpy doesn't
    _run_main(request["module"], request["args"])
    sys.exit(0)  # as `python -m` ends: threads joined, atexit run, buffers flushed


def _run_main(module, args) -> None:
    """Runs `python -m module *args`, or with module None `python -c CODE *rest` or `python SCRIPT
    *rest`, as __main__."""
    import runpy

    if module:
        sys.argv, sys.path[0] = [module, *args], os.getcwd()  # as `python -m` sets them
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    elif args[0] == "-c":
        sys.argv, sys.path[0] = ["-c", *args[2:]], ""  # as `python -c` sets them
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        sys.argv, sys.path[0] = list(args), os.path.dirname(os.path.abspath(args[0]))  # as `python SCRIPT`
        runpy.run_path(args[0], run_name="__main__")


def serve(path: str) -> None:
    """Answers each connection's one request: forks the command, sends its pid, then its exit code."""
    for name in PRELOAD:
        __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    waiting: dict = {}  # pid -> connection
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wakeup_read, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child([listener, conn, *waiting.values()], json.loads(message), fds)
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"{pid}\n".encode())
                waiting[pid] = conn
            else:
                os.read(wakeup_read, 4096)
                _reap(waiting)


def _reap(waiting: dict) -> None:
    while waiting:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass  # the test stopped waiting
            conn.close()


# ---- the client ---------------------------------------------------------------------------------


class Process:
    """A forked command, with the part of subprocess.Popen's interface the tests use."""

    def __init__(self, conn: socket.socket, pid: int, args: list):
        self._conn, self.pid, self.args, self.returncode = conn, pid, args, None

    def poll(self):
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._read_code()
            except BlockingIOError:
                pass
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            self._conn.setblocking(True)
            self._conn.settimeout(timeout)
            try:
                self._read_code()
            except socket.timeout:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def _read_code(self) -> None:
        data = self._conn.recv(64)
        self.returncode = int(data) if data.strip() else -signal.SIGKILL  # server gone: count it lost
        self._conn.close()

    def send_signal(self, number) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, number)
            except ProcessLookupError:
                pass  # ended and reaped; the server's word on it is on its way (as Popen.send_signal)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Server:
    """A server started with one environment (and wrapper command, such as a mount namespace)."""

    def __init__(self, env: dict, wrap):
        folder = tempfile.mkdtemp(prefix="forkserver-")
        self.path = os.path.join(folder, "socket")
        with open(self.path + ".log", "w") as log:  # TensorFlow's start-up notices
            self.proc = subprocess.Popen(
                wrap([sys.executable, __file__, self.path]),
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        atexit.register(shutil.rmtree, folder, True)
        atexit.register(self.proc.kill)
        self.ready = self.proc.stdout.readline().strip() == "ready"

    def up(self) -> bool:
        return self.ready and self.proc.poll() is None


_SERVERS: dict = {}  # wrapper -> _Server
_LOCK = threading.Lock()


def _server(env: dict, wrap) -> Optional[_Server]:
    """The server for `wrap`, started with `env` on first use; None if `env` differs from ENV in what
    is read at start-up (that command is about start-up: it runs as a plain subprocess)."""
    if _import_time(env) != _import_time(ENV):
        return None
    key = tuple(wrap([]))
    with _LOCK:
        if key not in _SERVERS:
            _SERVERS[key] = _Server(env, wrap)
    return _SERVERS[key] if _SERVERS[key].up() else None


def _fork(module, args, env, cwd, fds, wrap, new_session) -> Optional[Process]:
    if "--log_format=json" in args:  # its JSON converter must fork before TensorFlow is imported
        return None
    server = _server(env, wrap)
    if server is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(server.path)
    request = {"module": module, "args": [str(a) for a in args], "env": dict(env), "cwd": str(cwd)}
    socket.send_fds(conn, [json.dumps({**request, "new_session": new_session}).encode()], fds)
    command = [sys.executable, "-m", module, *args] if module else [sys.executable, *args]
    return Process(conn, int(conn.recv(64)), command)


def _unwrapped(command: list) -> list:
    return command


def start(module, args, env, cwd=REPO, stdout=None, stderr=None, wrap=None, new_session=False):
    """`subprocess.Popen(wrap([python, -m, module, *args]))` writing to the files `stdout` and `stderr`
    (stderr=subprocess.STDOUT: the same file); a forked Process when it can be one. The servers for
    one `wrap` (a command prefix such as a mount namespace) fork their commands inside it. With
    module None: `python *args`, forked for `-c CODE` and `SCRIPT.py`."""
    wrap = wrap or _unwrapped
    out = stdout.fileno() if stdout is not None else sys.stdout.fileno()
    err = sys.stderr.fileno() if stderr is None else stderr.fileno() if stderr != subprocess.STDOUT else out
    with open(os.devnull) as stdin:
        forkable = module or args[0] == "-c" or str(args[0]).endswith(".py")
        process = (
            _fork(module, args, env, cwd, [stdin.fileno(), out, err], wrap, new_session) if forkable else None
        )
    if process is None:
        command = wrap([sys.executable, "-m", module, *args] if module else [sys.executable, *args])
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=new_session
        )
    return process


def run(module, args, env, cwd=REPO, timeout=600, wrap=None) -> subprocess.CompletedProcess:
    """`subprocess.run([python, -m, module, *args], capture_output=True, text=True)`, forked if it can be."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = start(module, args, env, cwd, stdout=out, stderr=err, wrap=wrap)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(process.args, code, out.read(), err.read())


if __name__ == "__main__":
    serve(sys.argv[1])
