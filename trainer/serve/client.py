"""`python -m trainer.client`: colorize photo files through TF Serving's REST API.

    python -m trainer.client --server=http://HOST:8501 photo.jpg scan.png --output_dir=out
    python -m trainer.client --local_model=runs/colorizer/export photo.jpg --output_dir=out

Writes `out/<name>.png` per input, at the input's resolution. It first checks that the model has a
version in state AVAILABLE, then posts `{"instances": [{"image_bytes": {"b64": ...}}]}` in batches,
retrying 429/503/504 with exponential backoff and full jitter, and a lost connection once only (the
request may be what brought the server down). `--local_model` sends the same JSON to a SavedModel
on this machine (`trainer.serve.rest.LocalModel`), no server or cluster needed. Standard library and
Pillow (image headers, GIF conversion) on the server path: TensorFlow is imported for
`--local_model` alone. Files above the export's pixel limit are refused before anything is sent.
Serving decodes JPEG, PNG and BMP; a GIF is sent as a PNG of its first frame.
"""

import contextlib
import http.client
import io
import json
import os
import random
import time
import urllib.error
import urllib.request

from absl import app, flags

from trainer.data import images
from trainer.errors import (
    ColorizerError,
    ConfigError,
    DataError,
    exit_on_user_error,
    first_line,
    parse_flags_or_exit,
)
from trainer.serve import rest
from trainer.serve.limits import DEFAULT_MAX_PIXELS

RETRY_STATUSES = (429, 503, 504)
MAX_BACKOFF_SECONDS = 30.0
# Retries of a request whose connection failed (refused, reset, cut mid-answer, timed out). A request
# that kills a server cuts its connection: retried without end it would take down every replica.
CONNECTION_RETRIES = 1
_SENT_AS_IS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")  # JPEG, PNG, BMP: what serving decodes
_GIF = (b"GIF87a", b"GIF89a")  # sent as a PNG of the first frame (serving_default refuses GIF)
_MAGIC = _SENT_AS_IS + _GIF


DEFAULT_BATCH_SIZE = 4  # TF Serving's max_batch_size in k8s/'s serving overlays


class ServingError(ColorizerError):
    """The server refused a request, answered something unexpected, or could not be reached."""


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
                raise ServingError(rest.error_message(data, status))
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


def _unreadable(path: str, exc: Exception) -> DataError:
    return DataError(f"{path}: not a readable image ({type(exc).__name__}: {first_line(str(exc))})")


def _pixel_count(path: str, gif: bool) -> int:
    try:
        if not gif:
            return images.pixel_count(path)
        with open(path, "rb") as handle, _open_gif(handle.read(), path) as opened:
            return _frame_pixels(opened)
    except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises for a damaged header
        raise _unreadable(path, exc) from None


@contextlib.contextmanager
def _open_gif(data: bytes, path: str):
    """The GIF opened (header and first frame's descriptor read, nothing decoded); Pillow's
    decompression-bomb refusal, raised on opening, becomes a one-line DataError."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as gif:
            yield gif
    except Image.DecompressionBombError as exc:  # not an OSError
        raise DataError(f"{path}: {first_line(str(exc))}") from None


def _frame_pixels(gif) -> int:
    """The pixels Pillow allocates for a GIF's first frame: its canvas (Pillow widens the header's
    logical screen to the frame), or the frame's own extents where they reach further."""
    width, height = gif.size
    for tile in gif.tile:
        width, height = max(width, tile[1][2]), max(height, tile[1][3])
    return width * height


def _pixel_limit(max_pixels: int) -> int:
    """At most --max_pixels; with the check off, Pillow's decompression-bomb limit (~179 M pixels),
    kept even where Image.MAX_IMAGE_PIXELS was unset: a GIF converted here is decoded here."""
    from PIL import Image

    return max_pixels or 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


def _png_mode(frame) -> str:
    """RGBA where the frame has transparency, L for a gray palette, else RGB."""
    if frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info:
        return "RGBA"
    if frame.mode == "L":
        return "L"
    palette = frame.getpalette("RGB") if frame.mode == "P" else None
    gray = palette is not None and palette[0::3] == palette[1::3] == palette[2::3]
    return "L" if gray else "RGB"


def first_frame_png(data: bytes, path: str, max_pixels: int = 0) -> bytes:
    """A GIF's first frame as PNG bytes; a one-line DataError when the frame has more pixels than
    `max_pixels` (0: Pillow's decompression-bomb limit) or can't be decoded.

    Only the first frame is decoded, and only once its size, the frame's rather than the header's
    logical screen, is known to be within the limit."""
    limit = _pixel_limit(max_pixels)
    try:
        with _open_gif(data, path) as gif:
            pixels = _frame_pixels(gif)
            if pixels > limit:
                raise DataError(f"{path}: the GIF's first frame has {pixels} pixels, more than {limit}")
            gif.seek(0)
            gif.load()
            frame = gif.convert(_png_mode(gif))
    except (OSError, SyntaxError, ValueError) as exc:  # a damaged GIF
        raise _unreadable(path, exc) from None
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    return buffer.getvalue()


def request_bytes(path: str, max_pixels: int = 0) -> bytes:
    """What is sent for a file: its bytes, or for a GIF a PNG of its first frame."""
    with open(path, "rb") as handle:
        data = handle.read()
    return first_frame_png(data, path, max_pixels) if data.startswith(_GIF) else data


def plan_outputs(files: list, output_dir: str, overwrite: bool, max_pixels: int = 0) -> list:
    """(input, output) pairs; refuses missing, non-image and oversized inputs, clashes, existing outputs."""
    pairs: list = []
    taken: dict = {}
    for path in files:
        if not os.path.isfile(path):
            raise DataError(f"no such file: {path}")
        with open(path, "rb") as handle:
            head = handle.read(8)
        if not head.startswith(_MAGIC):
            raise DataError(f"{path}: not a JPEG, PNG, GIF or BMP file")
        if max_pixels and _pixel_count(path, head.startswith(_GIF)) > max_pixels:
            raise DataError(f"{path}: more than {max_pixels} pixels, which serving refuses (--max_pixels)")
        target = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        if target in taken:
            raise DataError(f"{taken[target]} and {path} would both be written to {target}")
        if os.path.exists(target) and not overwrite:
            raise DataError(f"{target} exists (pass --overwrite to replace it)")
        taken[target] = path
        pairs.append((path, target))
    return pairs


def colorize_files(
    client: Client,
    files: list,
    output_dir: str,
    batch_size: int,
    overwrite: bool = False,
    report=None,
    max_pixels: int = 0,
) -> list:
    """Colorizes `files` in batches of `batch_size`; returns the written paths."""
    pairs = plan_outputs(files, output_dir, overwrite, max_pixels)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        images = [request_bytes(source, max_pixels) for source, _ in batch]
        try:
            pngs = client.predict(images)
        except ServingError as exc:
            names = ", ".join(os.path.basename(s) for s, _ in batch[:3]) + (", ..." if len(batch) > 3 else "")
            raise ServingError(f"{exc} [batch: {names}]") from None
        for (_, target), png in zip(batch, pngs):
            try:
                with open(target, "wb" if overwrite else "xb") as handle:
                    handle.write(png)
            except FileExistsError:
                raise DataError(f"{target} exists (pass --overwrite to replace it)") from None
            written.append(target)
            if report:
                report(target)
    return written


FLAGS = flags.FLAGS


def define_flags():
    """Defines the CLI's flags; only `run()` calls it, because absl flags are process-global and
    importing this module as a library (next to other CLIs) must not claim flag names."""
    flags.DEFINE_string("server", None, "TF Serving REST address, e.g. http://localhost:8501.")
    flags.DEFINE_string(
        "local_model",
        None,
        "Colorize with this SavedModel (or export folder) instead of a server; starter: the model "
        "shipped in the package (a path of that name wins).",
    )
    flags.DEFINE_string(
        "model_name", "colorizer", "The model's name on the server (TF Serving's MODEL_NAME)."
    )
    flags.DEFINE_integer("version", None, "Ask for this model version (default: the server's latest).")
    flags.DEFINE_string("output_dir", None, "Where <name>.png is written for each input.")
    flags.DEFINE_integer(
        "batch_size",
        DEFAULT_BATCH_SIZE,
        "Images per predict request: at most the server's max_batch_size (4 in k8s/'s serving overlays; "
        "TF Serving refuses larger requests).",
    )
    flags.DEFINE_float("timeout", 120.0, "Seconds to wait for each HTTP answer.")
    flags.DEFINE_integer(
        "retries",
        4,
        "Retries of a request on 429/503/504 or a loading model. A lost connection is retried once "
        "at most, whatever this says: the request may be what brought the server down.",
    )
    flags.DEFINE_float(
        "backoff_seconds",
        0.5,
        "Retry window: each retry waits a random time up to it; doubled at each retry (at most 30 s).",
    )
    flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
    flags.DEFINE_integer(
        "max_pixels",
        DEFAULT_MAX_PIXELS,
        "Refuse files with more pixels before sending (the export's limit; 0: don't check, though a "
        "GIF, converted here, stays within Pillow's decompression-bomb limit).",
    )


def _client_from_flags() -> Client:
    if bool(FLAGS.server) == bool(FLAGS.local_model):
        raise ConfigError("pass exactly one of --server=http://HOST:8501 or --local_model=PATH")
    if not FLAGS.output_dir:
        raise ConfigError("--output_dir is required")
    if FLAGS.batch_size < 1:
        raise ConfigError(f"--batch_size={FLAGS.batch_size}: must be at least 1")
    if FLAGS.retries < 0 or FLAGS.backoff_seconds < 0 or FLAGS.timeout <= 0:
        raise ConfigError("--retries and --backoff_seconds must be at least 0, --timeout above 0")
    transport: HttpTransport | rest.LocalModel
    if FLAGS.local_model:
        from trainer.serve.export import resolve_saved_model  # TensorFlow: only for --local_model

        transport = rest.LocalModel(resolve_saved_model(FLAGS.local_model), FLAGS.model_name)
    elif not FLAGS.server.startswith(("http://", "https://")):
        raise ConfigError(f"--server={FLAGS.server}: expected http://HOST:PORT (the REST port, 8501)")
    else:
        transport = HttpTransport(FLAGS.server, FLAGS.timeout)
    return Client(transport, FLAGS.model_name, FLAGS.version, FLAGS.retries, FLAGS.backoff_seconds)


def main(argv):
    files = argv[1:]
    with exit_on_user_error():
        if not files:
            raise ConfigError("no input files (usage: python -m trainer.client [flags] FILE...)")
        client = _client_from_flags()
        version = client.wait_available()
        written = colorize_files(
            client,
            files,
            FLAGS.output_dir,
            FLAGS.batch_size,
            FLAGS.overwrite,
            report=lambda path: print(f"wrote {path}"),
            max_pixels=FLAGS.max_pixels,
        )
    print(f"colorized {len(written)} photo(s) with {FLAGS.model_name} version {version}")


def run():
    """Console-script entry point (`colorizer-client`)."""
    define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
