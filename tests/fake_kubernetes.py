"""A local fake Kubernetes API server for the `kubernetes` client (tests/test_launch.py, test_promote.py).

It answers the REST paths the client calls (jobs, services, pods, pod logs, kubeflow.org tfjobs,
ConfigMaps, strategic-merge PATCHes of ConfigMaps and pods, and the pod proxy
`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`) on 127.0.0.1, and records every request with the
path decoded as the API server routes it (Go's URL.Path), so tests assert on what would reach a
real cluster.
"""

import http.server
import json
import sys
import threading
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from kubernetes import client

MERGE_PATCHES = ("application/strategic-merge-patch+json", "application/merge-patch+json")


class FakeCluster(http.server.ThreadingHTTPServer):
    """Just enough of the Kubernetes API; `statuses` are returned by successive Job status reads.

    `patch_types` are the Content-Types of the PATCHes; `on_patch(plural, name)` runs after each PATCH
    is applied (a pod update is what makes the kubelet sync that pod); `proxy(pod, port, path)` answers
    pod-proxy GETs with (HTTP code, JSON body).
    """

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeApi)
        self.requests, self.objects, self.pods, self.logs, self.statuses = [], {}, [], {}, []
        self.fail_create, self.after_log, self.patch_types = None, {}, []
        self.on_patch = lambda plural, name: None
        self.proxy = lambda pod, port, path: (404, {"error": "nothing listens"})

    def api(self):
        return client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{self.server_port}"))

    def handle_error(self, request, client_address):
        """A client that stopped waiting (a pod that never answers, a poll timed out) is no error of the
        fake. Printing its traceback would also race CPython 3.11's ast.parse in another thread
        (traceback's caret anchors parse source): "AST constructor recursion depth mismatch"."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def merge(target: dict, patch: dict) -> dict:
    """A merge patch (RFC 7386): what a strategic merge does to maps such as data and annotations."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
    return target


def not_found(what, name):
    return {
        "kind": "Status",
        "status": "Failure",
        "reason": "NotFound",
        "code": 404,
        "message": f'{what} "{name}" not found',
    }


class FakeApi(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self, method):
        url, cluster = urlparse(self.path), self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        path = unquote(url.path)
        cluster.requests.append((method, path, parse_qs(url.query), body))
        parts = path.strip("/").split("/")
        if "proxy" in parts and parts[parts.index("proxy") - 2] == "pods" and method == "GET":
            return self.pod_proxy(parts)
        if method == "POST":
            return self.create(parts[-1], body)
        if method == "PATCH":
            return self.patch(parts[-2], parts[-1], body)
        if parts[-1] == "log":
            if parts[-2] not in cluster.logs:  # what the API server says before the container runs
                message = f'container "trainer" in pod "{parts[-2]}" is waiting to start'
                return self.reply(400, {"kind": "Status", "code": 400, "message": message})
            self.reply(200, cluster.logs[parts[-2]].encode(), "text/plain")
            return cluster.after_log.get(parts[-2], lambda: None)()
        if parts[-1] == "pods":
            return self.reply(
                200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": cluster.pods}
            )
        name = parts[-2] if parts[-1] == "status" else parts[-1]
        key = (parts[-3] if parts[-1] == "status" else parts[-2], name)
        if key not in cluster.objects:
            return self.reply(404, not_found(key[0], name))
        if method == "DELETE":
            return self.reply(200, {"kind": "Status", "status": "Success"})
        obj = dict(cluster.objects[key])
        if cluster.statuses:
            obj["status"] = cluster.statuses.pop(0) if len(cluster.statuses) > 1 else cluster.statuses[0]
        return self.reply(200, obj)

    def create(self, plural, body):
        cluster = self.server
        if cluster.fail_create:
            return self.reply(cluster.fail_create[0], cluster.fail_create[1])
        body["metadata"]["uid"] = f"uid-{body['metadata']['name']}"
        cluster.objects[(plural, body["metadata"]["name"])] = body
        return self.reply(201, body)

    def patch(self, plural, name, body):
        cluster = self.server
        cluster.patch_types.append(self.headers.get("Content-Type"))
        if self.headers.get("Content-Type") not in MERGE_PATCHES or not isinstance(body, dict):
            return self.reply(
                415,
                {
                    "kind": "Status",
                    "status": "Failure",
                    "code": 415,
                    "message": f"unsupported patch {self.headers.get('Content-Type')}",
                },
            )
        if plural == "pods":
            found = [p for p in cluster.pods if p["metadata"]["name"] == name]
        else:
            found = [cluster.objects[(plural, name)]] if (plural, name) in cluster.objects else []
        if not found:
            return self.reply(404, not_found(plural, name))
        merge(found[0], body)
        cluster.on_patch(plural, name)
        return self.reply(200, found[0])

    def pod_proxy(self, parts):
        """GET .../pods/NAME[:PORT]/proxy/PATH: the pod's own answer, passed through."""
        index = parts.index("proxy")
        pod, _, port = parts[index - 1].partition(":")
        if not any(p["metadata"]["name"] == pod for p in self.server.pods):
            return self.reply(404, not_found("pods", pod))
        code, body = self.server.proxy(pod, port, "/" + "/".join(parts[index + 1 :]))
        return self.reply(code, body)

    def do_GET(self):  # noqa: N802  (http.server's naming)
        self.handle_any("GET")

    def do_POST(self):  # noqa: N802
        self.handle_any("POST")

    def do_PATCH(self):  # noqa: N802
        self.handle_any("PATCH")

    def do_DELETE(self):  # noqa: N802
        self.handle_any("DELETE")


@pytest.fixture
def cluster():
    server = FakeCluster()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
