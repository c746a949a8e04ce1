"""`trainer.client` against a local HTTP server that answers like TF Serving, and as a CLI.

Error bodies and status payloads are TF Serving's own (tensorflow_serving/g3doc/api_rest.md,
model_servers/get_model_status_impl.cc, http_server.cc's status-code mapping).
"""

import base64
import http.server
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import forkserver
from tests.conftest import REPO, make_photo, write_photos
from tests.forkserver import ENV
from tests.hostile_requests import gif_with_a_larger_frame
from trainer.serve import archive, client, rest

PATH = "/v1/models/colorizer"


def status(*states):
    versions = [
        {"version": str(100 + i), "state": s, "status": {"error_code": "OK", "error_message": ""}}
        for i, s in enumerate(states)
    ]
    return 200, {"model_version_status": versions}


AVAILABLE = status("AVAILABLE")
LOADING = status("LOADING")
NOT_FOUND = 404, {"error": "Could not find any versions of model colorizer"}
UNAVAILABLE = 503, {"error": "Server not ready"}
QUEUE_FULL = 429, {"error": "The batch scheduling queue to which this task was submitted is full"}
TIMEOUT = 504, {"error": "Deadline exceeded"}
RESET = object()  # FakeServing closes the connection with a TCP reset, answering nothing
BAD_IMAGE = (
    400,
    {
        "error": "Unknown image file format. One of JPEG, PNG, GIF, BMP required.\n\t "
        "[[{{function_node __inference_colorize_bytes}}{{node DecodeImage}}]]"
    },
)


def echo_predict(body):
    """A predict answer that returns b'colorized:' + each input, encoded like TF Serving."""
    images = rest.decode_instances(body, {"image_bytes": object})["image_bytes"]
    return 200, rest.encode_predictions(
        {"colorized_bytes": np.array([b"colorized:" + i for i in images], object)}
    )


class FakeServing:
    """Answers each (method, path) from a script; the script's last answer repeats."""

    def __init__(self):
        self.script, self.requests = {}, []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests.append((self.command, self.path, json.loads(body) if body else None))
                answers = fake.script.get((self.command, self.path)) or [(404, {"error": "no such route"})]
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                if answer is RESET:  # as a server killed by the request: the connection dies unanswered
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                code, payload = answer(json.loads(body)) if callable(answer) else answer
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def on(self, method, path, *answers):
        self.script[(method, path)] = list(answers)


@pytest.fixture
def fake():
    server = FakeServing()
    yield server
    server.server.shutdown()
    server.server.server_close()


def make_client(url, sleeps=None, version=None, retries=3, jitter=lambda: 1.0):
    """A client whose waits are recorded, at the top of each backoff window unless `jitter` says."""
    recorder = sleeps.append if sleeps is not None else (lambda s: None)
    return client.Client(
        client.HttpTransport(url, 5), "colorizer", version, retries, 0.01, sleep=recorder, jitter=jitter
    )


def _photos(files, **kwargs):
    return archive.list_photos(files, **kwargs)[0]


def _colorize(serving, files, out, batch_size=8, **kwargs):
    return archive.colorize_archive(
        serving.predict, _photos(files), str(out), batch_size, bad_request=client.bad_request, **kwargs
    )


def test_colorizes_in_batches_and_writes_one_png_per_input(fake, tmp_path):
    fake.on("GET", f"{PATH}/versions/7", AVAILABLE)
    fake.on("POST", f"{PATH}/versions/7:predict", echo_predict)
    files = [str(tmp_path / "in" / n) for n in write_photos(tmp_path / "in", 5)]
    summary = _colorize(make_client(fake.url, version=7), files, tmp_path / "out", batch_size=2)
    assert summary.colorized == 5 and not summary.skipped
    assert sorted(os.listdir(tmp_path / "out")) == [f"photo{i:03d}.png" for i in range(5)]
    with open(tmp_path / "out" / "photo003.png", "rb") as output, open(files[3], "rb") as source:
        assert output.read() == b"colorized:" + source.read()
    batches = [body["instances"] for method, _, body in fake.requests if method == "POST"]
    assert sorted(len(b) for b in batches) == [1, 2, 2]
    assert set(batches[0][0]) == {"image_bytes"} and set(batches[0][0]["image_bytes"]) == {"b64"}


def test_waits_for_a_loading_model_with_exponential_backoff(fake):
    fake.on("GET", PATH, LOADING, LOADING, status("END", "AVAILABLE"))
    sleeps = []
    assert make_client(fake.url, sleeps).wait_available() == "101"
    assert sleeps == [0.01, 0.02]


def test_gives_up_on_a_model_that_stays_loading(fake):
    fake.on("GET", PATH, LOADING)
    sleeps = []
    with pytest.raises(
        client.ServingError, match=r"not ready yet \(version 100: LOADING\) \(gave up after 4 attempts"
    ):
        make_client(fake.url, sleeps).wait_available()
    assert sleeps == [0.01, 0.02, 0.04]


def test_failed_version_is_reported_without_retrying(fake):
    fake.on(
        "GET",
        PATH,
        (
            200,
            {
                "model_version_status": [
                    {
                        "version": "5",
                        "state": "END",
                        "status": {
                            "error_code": "NOT_FOUND",
                            "error_message": "Could not find SavedModel .pb or .pbtxt at supplied export dir",
                        },
                    }
                ]
            },
        ),
    )
    with pytest.raises(
        client.ServingError, match="no AVAILABLE version .version 5: END.: Could not find SavedModel"
    ):
        make_client(fake.url).wait_available()
    assert len(fake.requests) == 1


def test_unknown_model_is_one_line_404_without_retry(fake):
    fake.on("GET", PATH, NOT_FOUND)
    with pytest.raises(
        client.ServingError, match="^HTTP 404: Could not find any versions of model colorizer$"
    ):
        make_client(fake.url).wait_available()
    assert len(fake.requests) == 1


@pytest.mark.parametrize("transient", [UNAVAILABLE, QUEUE_FULL, TIMEOUT])
def test_retries_429_503_504_then_succeeds(fake, transient):
    fake.on("POST", f"{PATH}:predict", transient, transient, echo_predict)
    sleeps = []
    assert make_client(fake.url, sleeps).predict([b"a"]) == [b"colorized:a"]
    assert sleeps == [0.01, 0.02]


def test_persistent_503_gives_up_with_the_servers_message(fake):
    fake.on("POST", f"{PATH}:predict", UNAVAILABLE)
    with pytest.raises(
        client.ServingError, match=r"^HTTP 503: Server not ready \(gave up after 3 attempts\)$"
    ):
        make_client(fake.url, retries=2).predict([b"a"])


def refuse_the_bad_one(body):
    """TF Serving's answer to a batch: 400 for the whole request if any image is not a photo."""
    images = rest.decode_instances(body, {"image_bytes": object})["image_bytes"]
    return BAD_IMAGE if any(i.startswith(b"NOT") for i in images) else echo_predict(body)


def test_a_refused_batch_is_split_until_the_bad_photo_fails_alone(fake, tmp_path, monkeypatch):
    fake.on("GET", PATH, AVAILABLE)
    fake.on("POST", f"{PATH}:predict", refuse_the_bad_one)
    files = [str(tmp_path / n) for n in write_photos(tmp_path, 4)]
    monkeypatch.setattr(archive, "request_bytes", lambda data, name, limit: b"NOT" if "002" in name else data)
    summary = _colorize(make_client(fake.url), files, tmp_path / "out", batch_size=4)
    assert summary.colorized == 3 and sorted(os.listdir(tmp_path / "out")) == [
        "photo000.png",
        "photo001.png",
        "photo003.png",
    ]
    [(source, reason)] = summary.skipped
    assert source == files[2] and reason == (
        f"{files[2]}: refused by serving (HTTP 400: Unknown image file format. One of JPEG, PNG, GIF, BMP "
        "required.)"
    )
    sizes = [len(body["instances"]) for method, _, body in fake.requests if method == "POST"]
    assert sizes == [4, 2, 2, 1, 1]  # the batch, its halves, the bad half's halves


def test_unreachable_server_is_retried_once_then_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the client connects: refused
    sleeps = []
    with pytest.raises(
        client.ServingError,
        match=r"^cannot reach the server: .*Connection refused.*retried 1 time\(s\) at most "
        r"\(gave up after 2 attempts\)$",
    ):
        make_client(f"http://127.0.0.1:{port}", sleeps).wait_available()
    assert sleeps == [0.01]


def test_a_request_that_resets_the_connection_is_sent_twice_at_most(fake, tmp_path):
    """A poisoned request that kills each server it reaches must not walk through every replica,
    nor be split into smaller requests that would each kill one again."""
    fake.on("GET", PATH, AVAILABLE)
    fake.on("POST", f"{PATH}:predict", RESET)
    files = [str(tmp_path / n) for n in write_photos(tmp_path, 2)]
    sleeps = []
    with pytest.raises(client.ServingError) as caught:
        _colorize(make_client(fake.url, sleeps, retries=4), files, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("cannot reach the server: ") and "\n" not in message
    assert message.endswith("(gave up after 2 attempts)")
    assert [method for method, _, _ in fake.requests] == ["POST", "POST"] and sleeps == [0.01]


def test_one_lost_connection_then_an_answer_succeeds(fake):
    fake.on("POST", f"{PATH}:predict", RESET, UNAVAILABLE, echo_predict)
    sleeps = []
    assert make_client(fake.url, sleeps).predict([b"a"]) == [b"colorized:a"]
    assert len(fake.requests) == 3 and sleeps == [0.01, 0.02]


class _Answers:
    """A transport that answers from a list (its last answer repeats) and counts the calls."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), 0

    def request(self, method, path, body=None):
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        code, payload = answer
        return code, json.dumps(payload).encode()


def test_retries_wait_a_random_part_of_a_doubling_capped_window():
    """Full jitter: each wait is jitter() x the window; the window doubles and stops at 30 s."""
    draws, sleeps = iter([0.5, 0.25, 0.0, 0.999, 0.1]), []
    serving = client.Client(
        _Answers(UNAVAILABLE), "colorizer", retries=5, backoff=10, sleep=sleeps.append, jitter=draws.__next__
    )
    with pytest.raises(
        client.ServingError, match=r"HTTP 503: Server not ready \(gave up after 6 attempts\)$"
    ):
        serving.predict([b"a"])
    assert sleeps == pytest.approx([5.0, 5.0, 0.0, 29.97, 3.0])


def test_connection_errors_are_retried_once_whatever_else_came_before():
    transport = _Answers(
        QUEUE_FULL, QUEUE_FULL, ConnectionResetError("reset"), TIMEOUT, ConnectionError("cut")
    )
    sleeps = []
    serving = client.Client(transport, "colorizer", retries=9, sleep=sleeps.append, jitter=lambda: 0.5)
    with pytest.raises(
        client.ServingError, match=r"cannot reach the server: cut; .*\(gave up after 5 attempts\)$"
    ):
        serving.predict([b"a"])
    assert transport.calls == 5 and sleeps == [0.25, 0.5, 1.0, 2.0]


def test_without_injected_jitter_the_waits_are_random_within_the_window():
    sleeps = []
    serving = client.Client(_Answers(UNAVAILABLE), "colorizer", retries=40, backoff=0.01, sleep=sleeps.append)
    with pytest.raises(client.ServingError):
        serving.predict([b"a"])
    windows = [min(0.01 * 2**i, client.MAX_BACKOFF_SECONDS) for i in range(40)]
    assert all(0 <= wait <= window for wait, window in zip(sleeps, windows)) and len(set(sleeps)) > 30


def test_answer_that_is_not_predictions_is_an_error(fake):
    fake.on("POST", f"{PATH}:predict", (200, {"predictions": []}))
    with pytest.raises(client.ServingError, match="unexpected predict answer: expected 'predictions' with 1"):
        make_client(fake.url).predict([b"a"])


def test_existing_outputs_are_skipped_so_a_rerun_resumes_and_overwrite_replaces(tmp_path):
    files = [str(tmp_path / n) for n in write_photos(tmp_path, 2)]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "photo001.png").write_bytes(b"keep me")
    todo = archive.pending(_photos(files), str(tmp_path / "out"))
    assert [p.output for p in todo] == ["photo000.png"]
    assert len(archive.pending(_photos(files), str(tmp_path / "out"), overwrite=True)) == 2


def test_bad_inputs_fail_alone_and_a_missing_input_is_refused_before_any_request(tmp_path):
    [name] = write_photos(tmp_path, 1)
    with pytest.raises(client.ConfigError, match="missing.jpg: no such file or folder"):
        _photos([str(tmp_path / name), str(tmp_path / "missing.jpg")])
    notes = _write(tmp_path / "notes.txt", b"hello")
    with pytest.raises(archive.DataError, match=r"notes.txt: not a readable image \(UnidentifiedImageError"):
        archive.read_photo(archive.Photo(notes, "notes.png", 5))


def test_oversized_images_are_refused_from_their_header(tmp_path):
    from tests.hostile_requests import png_bomb

    [name] = write_photos(tmp_path, 1)
    data = (tmp_path / name).read_bytes()
    assert archive.request_bytes(data, name, max_pixels=64 * 48) == data  # a PNG goes as it is
    with pytest.raises(archive.DataError, match=r"^photo000.png: 3072 pixels, more than 3071 \(--max_"):
        archive.request_bytes(data, name, max_pixels=64 * 48 - 1)
    with pytest.raises(archive.DataError, match=r"^cut.png: not a readable image \("):
        archive.request_bytes(data[:12], "cut.png", max_pixels=100)  # a header cut short
    with pytest.raises(archive.DataError, match=r"^b.png: Image size \(200000000 pixels\) exceeds limit"):
        archive.request_bytes(png_bomb(20000, 10000), "b.png", max_pixels=client.DEFAULT_MAX_PIXELS)
    big = archive.Photo(str(tmp_path / name), name, 65 * 2**20)
    with pytest.raises(archive.DataError, match="65.0 MiB, over the 64 MiB a photo file may have"):
        archive.read_photo(big)


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def _gif(*frames, **options) -> bytes:
    """A GIF of these Pillow images, one frame each, written by Pillow."""
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=len(frames) > 1, append_images=frames[1:], **options)
    return buffer.getvalue()


def _palette_frame():
    """Black, red and blue stripes on a palette of three colours."""
    frame = Image.fromarray(np.tile(np.array([0, 1, 2], np.uint8), (20, 10)), "P")
    frame.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    return frame


def _frame(path, index, mode="RGB"):
    with Image.open(path) as gif:
        gif.seek(index)
        return np.asarray(gif.convert(mode))


def test_a_gif_is_sent_as_a_png_of_its_first_frame(fake, tmp_path):
    fake.on("GET", PATH, AVAILABLE)
    fake.on("POST", f"{PATH}:predict", echo_predict)
    gif = _write(tmp_path / "anim.gif", _gif(Image.fromarray(make_photo(1)), Image.fromarray(make_photo(2))))
    _colorize(make_client(fake.url), [gif], tmp_path / "out")
    written = tmp_path / "out" / "anim.png"
    [body] = [body for method, _, body in fake.requests if method == "POST"]
    sent = base64.b64decode(body["instances"][0]["image_bytes"]["b64"])
    assert sent.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(sent)) as png:
        assert png.mode == "RGB" and np.array_equal(np.asarray(png), _frame(gif, 0))
    assert not np.array_equal(_frame(gif, 0), _frame(gif, 1))
    with open(written, "rb") as output:
        assert output.read() == b"colorized:" + sent


@pytest.mark.parametrize(
    "frame, options, mode",
    [
        (Image.new("L", (30, 20), 77), {}, "L"),
        (_palette_frame(), {"transparency": 1}, "RGBA"),
    ],
    ids=["gray", "transparent"],
)
def test_a_gif_frame_keeps_its_gray_or_transparency(tmp_path, frame, options, mode):
    gif = _write(tmp_path / "one.gif", _gif(frame, **options))
    with Image.open(io.BytesIO(archive.request_bytes(open(gif, "rb").read(), gif))) as png:
        assert png.format == "PNG" and png.mode == mode
        assert np.array_equal(np.asarray(png), _frame(gif, 0, mode))
        assert mode != "RGBA" or np.asarray(png)[0, 1, 3] == 0  # the red stripe is transparent


def test_only_the_first_frame_is_decoded(tmp_path):
    """A second frame cut short does not matter: it is never read."""
    frames = [Image.fromarray(make_photo(i)) for i in (4, 5)]
    whole, first = _gif(*frames), _gif(frames[0])
    cut = whole[: len(first) + (len(whole) - len(first)) // 2]
    png = archive.request_bytes(cut, "cut.gif", max_pixels=10**6)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), _frame(io.BytesIO(whole), 0))


def test_a_gif_is_limited_by_its_frame_not_its_screen(tmp_path, monkeypatch):
    """The header says 1x1; the frame Pillow would decode is 2000x2000."""
    data = gif_with_a_larger_frame(2000)
    with pytest.raises(archive.DataError) as caught:
        archive.request_bytes(data, "screen.gif", max_pixels=3_999_999)
    assert str(caught.value) == "screen.gif: 4000000 pixels, more than 3999999 (--max_pixels)"
    assert archive.request_bytes(data, "screen.gif", max_pixels=4_000_000).startswith(b"\x89PNG")
    # With the check off (--max_pixels=0), Pillow's decompression-bomb limit still applies.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with pytest.raises(archive.DataError, match=r"screen.gif: Image size \(4000000 pixels\) exceeds limit"):
        archive.request_bytes(data, "screen.gif")


def _cli(*args, cwd=REPO):
    return forkserver.run("trainer.client", args, ENV, cwd, timeout=300)


@pytest.mark.system
def test_cli_names_a_refused_photo_writes_the_rest_and_exits_5(fake, tmp_path):
    fake.on("GET", PATH, AVAILABLE)
    fake.on("POST", f"{PATH}:predict", BAD_IMAGE)
    files = [str(tmp_path / n) for n in write_photos(tmp_path, 1)]
    run = _cli(f"--server={fake.url}", f"--output_dir={tmp_path}/out", *files)
    assert run.returncode == 5, run.stderr
    assert f"{files[0]}: refused by serving (HTTP 400: Unknown image file format" in run.stderr
    assert "colorized 0 photo(s)" in run.stdout and "1 skipped" in run.stdout
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no inputs"),
        (["--output_dir=o", "x.jpg"], "pass exactly one of --server"),
        (
            ["--server=localhost:8501", "--output_dir=o", "x.jpg"],
            "--server=localhost:8501: expected http://HOST:PORT",
        ),
    ],
)
@pytest.mark.system
def test_cli_bad_flags_exit_2(args, message):
    run = _cli(*args)
    assert run.returncode == 2 and f"error: {message}" in run.stderr


def _archive(folder):
    """Photos as people have them, a few of them bad: {name: displayed (height, width) or None}."""
    folder.mkdir()
    photo = Image.fromarray(make_photo(3))  # 64 x 48
    photo.save(folder / "a.jpg")
    photo.save(folder / "a.png")  # the same name up to the extension: both keep it
    (folder / "scans").mkdir()
    photo.save(folder / "scans" / "page.tif")
    photo.convert("CMYK").save(folder / "scans" / "cmyk.jpg")
    deep = make_photo(4)[..., 0].astype(np.uint16) * 257  # 16-bit gray
    Image.fromarray(deep).save(folder / "scans" / "deep.png")  # mode I;16
    photo.save(folder / "web.webp")
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "scans" / "palette.bmp")
    (folder / "notes.txt").write_text("scanned 1987")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed turned 90 degrees
    photo.save(folder / "phone.jpg", exif=exif)
    whole = (folder / "a.jpg").read_bytes()  # cut inside its pixel data: only decoding finds out
    (folder / "bad.jpeg").write_bytes(whole[: len(whole) * 2 // 3])
    (folder / "cut.jpg").write_bytes((folder / "a.jpg").read_bytes()[:100])
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return {
        "a.jpg.png": (48, 64),
        "a.png.png": (48, 64),
        "scans/page.png": (48, 64),
        "scans/cmyk.png": (48, 64),
        "scans/deep.png": (48, 64),
        "web.png": (48, 64),
        "phone.png": (64, 48),
        "scans/palette.png": (48, 64),
    }


@pytest.mark.system
def test_cli_colorizes_a_folder_as_people_have_it_and_a_rerun_resumes(tmp_path, tiny_export):
    export_dir = os.path.dirname(tiny_export)
    expected = _archive(tmp_path / "photos")
    args = (f"--local_model={export_dir}", "--output_dir=out", "--parallel=3", "--batch_size=2", "photos")
    run = _cli(*args, cwd=tmp_path)
    assert run.returncode == 5, run.stderr
    assert "photos/bad.jpeg: refused by serving (HTTP 400: " in run.stderr and "Traceback" not in run.stderr
    assert "photos/cut.jpg: not a readable image (" in run.stderr
    assert "colorized 8 photo(s)" in run.stdout and "2 skipped" in run.stdout
    assert "2 file(s) in folders left out as not photos by name" in run.stdout
    assert "left out (not photos by name): photos/.DS_Store, photos/notes.txt" in run.stdout
    written = {
        os.path.relpath(os.path.join(root, n), tmp_path / "out")
        for root, _, names in os.walk(tmp_path / "out")
        for n in names
    }
    assert written == set(expected)  # no temporary files left either
    for name, shape in expected.items():
        assert tf.io.decode_png((tmp_path / "out" / name).read_bytes()).shape == (*shape, 3), name
    os.remove(tmp_path / "out" / "web.png")  # as if the first run had been interrupted
    again = _cli(*args, cwd=tmp_path)
    assert again.returncode == 5 and "colorized 1 photo(s)" in again.stdout, again.stderr
    assert "; 7 already done; 2 skipped" in again.stdout
    before = _tree(tmp_path / "out")
    started = time.monotonic()
    third = _cli(*args, cwd=tmp_path)  # nothing left but the bad photos: nothing new is written
    assert third.returncode == 5 and "colorized 0 photo(s)" in third.stdout
    assert _tree(tmp_path / "out") == before
    assert time.monotonic() - started < 30
    pairs = _cli(*args[:-1], "--output_dir=pairs", "--side_by_side", "photos/phone.jpg", cwd=tmp_path)
    assert pairs.returncode == 0, pairs.stderr
    assert tf.io.decode_png((tmp_path / "pairs" / "phone.png").read_bytes()).shape == (64, 96, 3)


def _tree(folder) -> dict:
    return {
        os.path.join(root, n): os.stat(os.path.join(root, n)).st_mtime_ns
        for root, _, names in os.walk(folder)
        for n in names
    }


def test_the_http_client_imports_no_tensorflow():
    """Only --local_model needs TensorFlow: the server path starts in well under a second."""
    code = "import sys, trainer.client, trainer.serve.archive; assert 'tensorflow' not in sys.modules"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
