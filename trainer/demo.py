"""`python -m trainer.demo`: a page on localhost to try a model on your own photos.

    python -m trainer.demo --local_model=starter            # the model shipped in the package
    python -m trainer.demo --server=http://localhost:8501   # a TF Serving server (kubectl port-forward)

Open the printed address, choose or drop a photo: the page shows it in gray and colorized side by
side, with a link to download the result. Each photo goes through the same path as
`trainer.client`'s (trainer/serve/archive.py: EXIF orientation, TIFF, WebP, ...), one at a time.
Standard library only; it listens on 127.0.0.1 unless --host says otherwise.
"""

import http.server
import sys
from pathlib import Path

from absl import app, flags

from trainer.data.photo_source import MAX_PHOTO_BYTES
from trainer.errors import ColorizerError, ConfigError, exit_on_user_error, first_line, parse_flags_or_exit
from trainer.serve import archive, client
from trainer.serve.limits import DEFAULT_MAX_PIXELS

PAGE = (Path(__file__).parent / "serve" / "demo.html").read_bytes()
FLAGS = flags.FLAGS


def handler_for(colorize) -> type:
    """The request handler: GET / is the page, POST /colorize takes a photo file and answers a PNG."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path not in ("/", "/index.html"):
                return self._answer(404, b"not found", "text/plain")
            return self._answer(200, PAGE, "text/html; charset=utf-8")

        def do_POST(self):
            if self.path != "/colorize":
                return self._answer(404, b"not found", "text/plain")
            size = int(self.headers.get("Content-Length") or 0)
            if not 0 < size <= MAX_PHOTO_BYTES:
                return self._answer(413, b"send one photo file of at most 64 MiB", "text/plain")
            try:
                png = colorize(self.rfile.read(size))
            except ColorizerError as exc:
                return self._answer(400, first_line(str(exc)).encode(), "text/plain; charset=utf-8")
            return self._answer(200, png, "image/png")

        def _answer(self, status: int, body: bytes, kind: str):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # one line per request on stderr, as http.server does
            print(f"{self.address_string()} {format % args}", file=sys.stderr)

    return Handler


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    with exit_on_user_error():
        model = client.client_from_flags(FLAGS)
        version = model.wait_available()

        def colorize(data: bytes) -> bytes:
            [png] = model.predict([archive.request_bytes(data, "the photo", FLAGS.max_pixels)])
            return png

        try:
            server = http.server.ThreadingHTTPServer((FLAGS.host, FLAGS.port), handler_for(colorize))
        except OSError as exc:
            raise ConfigError(f"--host={FLAGS.host} --port={FLAGS.port}: {exc.strerror}") from None
    host, port = server.server_address[:2]
    print(f"colorizer demo ({FLAGS.model_name} version {version}): http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def run():
    """Console-script entry point (`colorizer-demo`)."""
    client.define_model_flags()
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).")
    flags.DEFINE_integer(
        "max_pixels", DEFAULT_MAX_PIXELS, "Refuse photos with more pixels (the export's limit)."
    )
    app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
    run()
