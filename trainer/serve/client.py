"""`python -m trainer.client`: colorize photos (files, folders, gs:// prefixes) through TF Serving's REST API.

    python -m trainer.client --server=http://HOST:8501 --output_dir=out photos/ scan.tif
    python -m trainer.client --local_model=starter --output_dir=gs://BUCKET/colorized gs://BUCKET/photos/

Writes one PNG per photo at its displayed resolution, named by the rule in `trainer.serve.archive`
(which also says what is sent, how a bad file is skipped alone and how a rerun resumes). It first
checks that the model has a version in state AVAILABLE, then posts
`{"instances": [{"image_bytes": {"b64": ...}}]}` in batches, `--parallel` at a time, retrying
429/503/504 with exponential backoff and full jitter, and a lost connection once only (the request
may be what brought the server down). `--local_model` sends the same JSON to a SavedModel on this
machine (`trainer.serve.rest.LocalModel`), no server or cluster needed; TensorFlow is imported for
it alone. Exit 0 when every photo is colorized (or was already), EXIT_SKIPPED when some were
skipped (each named), 2 or 3 for bad flags or inputs, 1 when serving fails for good.
"""

import functools
import http.client
import json
import os
import random
import sys
import time
import types
import urllib.error
import urllib.request

from absl import app, flags

from trainer import console
from trainer.data.photo_source import task_defaults
from trainer.errors import (
    EXIT_SKIPPED,
    EXIT_UNEXPECTED,
    ColorizerError,
    ConfigError,
    exit_on_user_error,
    parse_flags_or_exit,
)
from trainer.serve import archive, rest
from trainer.serve.limits import DEFAULT_MAX_PIXELS

RETRY_STATUSES = (429, 503, 504)
MAX_BACKOFF_SECONDS = 30.0
# Retries of a request whose connection failed (refused, reset, cut mid-answer, timed out). A request
# that kills a server cuts its connection: retried without end it would take down every replica.
CONNECTION_RETRIES = 1
PROGRESS_SECONDS = 10.0  # a progress line this often when stderr is not a terminal


DEFAULT_BATCH_SIZE = 4  # TF Serving's max_batch_size in k8s/'s serving overlays
# Requests in flight: 2 x 4 images fit the serving overlays' 16 queued batches with room for other
# clients (docs/SERVING.md, Limits).
DEFAULT_PARALLEL = 2


class ServingError(ColorizerError):
    """The server refused a request, answered something unexpected, or could not be reached."""

    # Not the input's fault: counted against a Job's retries (exit 1), then a rerun resumes.
    exit_code = EXIT_UNEXPECTED

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status  # the HTTP status of a refusal; 0 when there was no answer to blame


class HttpTransport:
    """`request(method, path, body) -> (HTTP status, body bytes)` over urllib; OSError if unreachable."""

    def __init__(self, server: str, timeout: float):
        self.server = server.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None):
        req = urllib.request.Request(
            self.server + path, data=body, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except http.client.HTTPException as exc:  # e.g. a connection cut mid-response
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None


class Client:
    """The model-status check and batched predict calls, with retries, over any transport."""

    def __init__(
        self,
        transport,
        model_name: str,
        version=None,
        retries: int = 4,
        backoff: float = 0.5,
        sleep=time.sleep,
        jitter=random.random,
    ):
        """`sleep(seconds)` waits and `jitter()` returns a number in [0, 1): both given by tests."""
        self.transport, self.model_name, self.version = transport, model_name, version
        self.retries, self.backoff, self.sleep, self.jitter = retries, backoff, sleep, jitter
        self.path = rest.model_path(model_name, version)

    def _pause(self, retry: int) -> None:
        """Full jitter: a random wait within the backoff window (doubled per retry, capped), so that
        clients refused together don't all come back at the same moment."""
        self.sleep(self.jitter() * min(self.backoff * 2 ** (retry - 1), MAX_BACKOFF_SECONDS))

    def _call(self, method: str, path: str, body: bytes | None = None, check=None) -> dict:
        """One request, retried up to `retries` times on 429/503/504 and `check` returning a reason,
        but at most CONNECTION_RETRIES times on a connection error."""
        problem, lost, attempt = "", 0, 0
        for attempt in range(1, self.retries + 2):
            if attempt > 1:
                self._pause(attempt - 1)
            try:
                status, data = self.transport.request(method, path, body)
            except OSError as exc:
                problem = f"cannot reach the server: {getattr(exc, 'reason', None) or exc}"
                lost += 1
                if lost > CONNECTION_RETRIES:
                    problem += f"; a lost connection is retried {CONNECTION_RETRIES} time(s) at most"
                    break
                continue
            if status in RETRY_STATUSES:
                problem = rest.error_message(data, status)
                continue
            if status != 200:
                raise ServingError(rest.error_message(data, status), status)
            try:
                answer = json.loads(data)
            except ValueError:
                raise ServingError(f"{method} {path}: the answer is not JSON: {data[:100]!r}") from None
            trouble = check(answer) if check else None
            if not trouble:
                return answer
            problem = trouble
        raise ServingError(f"{problem} (gave up after {attempt} attempts)")

    def _available(self, answer: dict):
        """None if a version is AVAILABLE; a reason to retry while one is loading; else raises."""
        statuses = answer.get("model_version_status") if isinstance(answer, dict) else None
        if not isinstance(statuses, list) or not statuses:
            raise ServingError(f"unexpected model status answer: {str(answer)[:200]}")
        if any(s.get("state") == "AVAILABLE" for s in statuses):
            return None
        states = ", ".join(f"version {s.get('version')}: {s.get('state')}" for s in statuses)
        if any(s.get("state") in ("START", "LOADING") for s in statuses):
            return f"model {self.model_name} is not ready yet ({states})"
        errors = [s.get("status", {}).get("error_message") for s in statuses]
        detail = next((": " + e.splitlines()[0] for e in errors if e), "")
        raise ServingError(f"model {self.model_name} has no AVAILABLE version ({states}){detail}")

    def wait_available(self) -> str:
        """Checks `GET /v1/models/NAME[/versions/N]`; returns the AVAILABLE version (the highest)."""
        answer = self._call("GET", self.path, check=self._available)
        return max(
            (s for s in answer["model_version_status"] if s.get("state") == "AVAILABLE"),
            key=lambda s: int(s.get("version", 0)),
        )["version"]

    def predict(self, images: list) -> list:
        """Encoded image files -> colorized PNG bytes, one `:predict` call."""
        body = json.dumps(rest.predict_request(images)).encode()
        answer = self._call("POST", self.path + ":predict", body)
        try:
            return rest.parse_predictions(answer, len(images))
        except (rest.RestError, ValueError, TypeError, KeyError) as exc:
            raise ServingError(f"unexpected predict answer: {exc}") from None


def bad_request(exc: Exception) -> bool:
    """Whether serving refused a request for its content (HTTP 400: a file it can't decode)."""
    return isinstance(exc, ServingError) and exc.status == 400


FLAGS = flags.FLAGS


def _binding(values: flags.FlagValues):
    """absl's DEFINE_* functions with flag_values=values."""
    names = [name for name in dir(flags) if name.startswith("DEFINE_")]
    bound = {name: functools.partial(getattr(flags, name), flag_values=values) for name in names}
    return types.SimpleNamespace(**bound)


def define_model_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """The flags that choose the model and how it is called: this CLI's and `trainer.demo`'s."""
    define = _binding(values)
    define.DEFINE_string("server", None, "TF Serving REST address, e.g. http://localhost:8501.")
    define.DEFINE_string(
        "local_model",
        None,
        "Colorize with this SavedModel (or export folder) instead of a server; starter: the model "
        "shipped in the package (a path of that name wins).",
    )
    define.DEFINE_string(
        "model_name", "colorizer", "The model's name on the server (TF Serving's MODEL_NAME)."
    )
    define.DEFINE_integer("version", None, "Ask for this model version (default: the server's latest).")
    define.DEFINE_float("timeout", 120.0, "Seconds to wait for each HTTP answer.")
    define.DEFINE_integer(
        "retries",
        4,
        "Retries of a request on 429/503/504 or a loading model. A lost connection is retried once "
        "at most, whatever this says: the request may be what brought the server down.",
    )
    define.DEFINE_float(
        "backoff_seconds",
        0.5,
        "Retry window: each retry waits a random time up to it; doubled at each retry (at most 30 s).",
    )


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the CLI's flags on `values`; `run()` calls it for absl's process-wide FLAGS (so that
    importing this module as a library, next to other CLIs, claims no flag names), and
    `trainer.launch colorize` on a FlagValues of its own to check --arg flags."""
    define = _binding(values)
    define_model_flags(values)
    define.DEFINE_string(
        "output_dir", None, "Folder or gs:// prefix of the outputs (naming: trainer/serve/archive.py)."
    )
    define.DEFINE_integer(
        "batch_size",
        DEFAULT_BATCH_SIZE,
        "Images per predict request: at most the server's max_batch_size (4 in k8s/'s serving overlays; "
        "TF Serving refuses larger requests).",
    )
    define.DEFINE_integer(
        "parallel",
        DEFAULT_PARALLEL,
        "Requests in flight at once (each thread reads, sends and writes its own batch). Keep "
        "parallel x batch_size within the server's queue: docs/SERVING.md, Limits.",
    )
    define.DEFINE_bool("side_by_side", False, "Write gray | colour side by side (to show the result).")
    define.DEFINE_bool(
        "overwrite", False, "Replace existing outputs (by default they are skipped: a rerun resumes)."
    )
    define.DEFINE_integer(
        "num_tasks",
        None,
        "Split the photos among this many tasks by a hash of each output name [$COLORIZER_NUM_TASKS or 1].",
    )
    define.DEFINE_integer(
        "task_index", None, "This task's share, 0 to --num_tasks - 1 [$JOB_COMPLETION_INDEX, else 0]."
    )
    define.DEFINE_integer(
        "max_pixels",
        DEFAULT_MAX_PIXELS,
        "Refuse files with more pixels before sending (the export's limit; 0: don't check, though a "
        "GIF, converted here, stays within Pillow's decompression-bomb limit).",
    )


def check_model_flags(values: flags.FlagValues) -> None:
    """The model flags' own mistakes, found before anything is read or loaded."""
    if bool(values.server) == bool(values.local_model):
        raise ConfigError("pass exactly one of --server=http://HOST:8501 or --local_model=PATH")
    if values.server and not values.server.startswith(("http://", "https://")):
        raise ConfigError(f"--server={values.server}: expected http://HOST:PORT (the REST port, 8501)")
    if values.retries < 0 or values.backoff_seconds < 0 or values.timeout <= 0:
        raise ConfigError("--retries and --backoff_seconds must be at least 0, --timeout above 0")


def client_from_flags(values: flags.FlagValues) -> Client:
    """The Client that --server or --local_model name (also `trainer.demo`'s, which defines the same
    flags with `define_model_flags`)."""
    check_model_flags(values)
    transport: HttpTransport | rest.LocalModel
    if values.local_model:
        if console.wants_quiet(bool(values["verbosity"].present), os.environ):
            console.quiet_tensorflow(os.environ)
        from trainer.serve.export import resolve_saved_model  # TensorFlow: only for --local_model

        transport = rest.LocalModel(resolve_saved_model(values.local_model), values.model_name)
    else:
        transport = HttpTransport(values.server, values.timeout)
    return Client(transport, values.model_name, values.version, values.retries, values.backoff_seconds)


def _client_from_flags() -> Client:
    for name, value in (("batch_size", FLAGS.batch_size), ("parallel", FLAGS.parallel)):
        if value < 1:
            raise ConfigError(f"--{name}={value}: must be at least 1")
    return client_from_flags(FLAGS)


def _task(environ) -> tuple:
    """(num_tasks, task_index): the flags, else an Indexed Job pod's environment, else (1, 0)."""
    num_tasks, task_index, _ = task_defaults(FLAGS.num_tasks, FLAGS.task_index, "", environ)
    num_tasks, task_index = num_tasks or 1, task_index or 0
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ConfigError(f"--task_index={task_index} of --num_tasks={num_tasks}: must be 0 to num_tasks - 1")
    return num_tasks, task_index


def main(argv):
    inputs = argv[1:]
    with exit_on_user_error():
        if not inputs:
            raise ConfigError(
                "no inputs (usage: python -m trainer.client [flags] FILE|FOLDER|gs://PREFIX...)"
            )
        check_model_flags(FLAGS)
        if not FLAGS.output_dir:
            raise ConfigError("--output_dir is required")
        num_tasks, task_index = _task(os.environ)
        photos, ignored = archive.list_photos(inputs, num_tasks, task_index, FLAGS.output_dir)
        archive.check_output_dir(FLAGS.output_dir)
        client = _client_from_flags()  # after the inputs: a typo is found before the model loads
        todo = archive.pending(photos, FLAGS.output_dir, FLAGS.overwrite)
        version = client.wait_available() if todo else None
        progress = console.PhotoProgress(len(todo), PROGRESS_SECONDS)
        try:
            summary = archive.colorize_archive(
                client.predict,
                todo,
                FLAGS.output_dir,
                FLAGS.batch_size,
                FLAGS.parallel,
                FLAGS.max_pixels,
                bad_request,
                report=progress,
                pair=FLAGS.side_by_side,
            )
        finally:
            progress.close()
    done = len(photos) - len(todo)
    print(
        f"colorized {summary.colorized} photo(s) into {FLAGS.output_dir}"
        + (f" with {FLAGS.model_name} version {version}" if version else "")
        + f"; {done} already done; {len(summary.skipped)} skipped"
        + (f"; {len(ignored)} file(s) in folders left out as not photos by name" if ignored else "")
    )
    if ignored:
        shown = ", ".join(ignored[:10]) + (f" and {len(ignored) - 10} more" if len(ignored) > 10 else "")
        print(f"left out (not photos by name): {shown}")
    if summary.skipped:
        print(f"skipped (exit {EXIT_SKIPPED}):", file=sys.stderr)
        for _, reason in summary.skipped:
            print(f"  {reason}", file=sys.stderr)
        sys.exit(EXIT_SKIPPED)


def run():
    """Console-script entry point (`colorizer-client`)."""
    define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
