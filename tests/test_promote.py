"""The promotion gate, promote and rollback, against a fake of TF Serving's config reloads.

FakeServing applies each model config the way ServerCore::ReloadConfig does for the parts we rely
on (model_servers/server_core.cc): the specific versions listed are loaded, the others unloaded; a
config that moves an existing label to a version that is not AVAILABLE is refused as a whole
(UpdateModelVersionLabelMap), and a pod that starts fresh accepts any labels
(--allow_version_labels_for_unavailable_models). Exports are real, and scored by trainer.serve.evaluate.

The last tests drive the real `launch_serving.Cluster` (kubernetes client, HTTP) against the fake API
server of tests/fake_kubernetes.py, with the same FakeServing pods behind its pod proxy.
"""

import json
import shutil
import tempfile
import time

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tests import fake_kubernetes
from tests.conftest import write_photos
from trainer.cluster import launch
from trainer.cluster import serving as launch_serving
from trainer.serve import export, promote
from trainer.train.models import build_model

cluster = fake_kubernetes.cluster  # the fixture


class FakeServing:
    """The ConfigMaps and the serving pods, each pod holding what TF Serving would have loaded."""

    def __init__(self, export_dir, pods=("serving-a", "serving-b")):
        self.text, self.annotations, self.export_dir = "", {}, str(export_dir)
        self.pods_state = {pod: {"versions": [], "labels": {}} for pod in pods}
        self.refused = 0

    def read(self):
        return self.text, dict(self.annotations), self.export_dir

    def write(self, text, live_history):
        self.text, self.annotations = text, {promote.HISTORY_ANNOTATION: json.dumps(live_history)}
        text_format.Parse(text, model_server_config_pb2.ModelServerConfig())  # what TF Serving parses
        for state in self.pods_state.values():
            self.reload(state, *promote.parse(text))

    def reload(self, state, versions, labels):
        for label, version in labels.items():
            moved = label in state["labels"] and state["labels"][label] != version
            if moved and version not in state["versions"]:
                self.refused += 1  # FailedPrecondition: the whole reload is dropped
                return
        state["versions"], state["labels"] = list(versions), dict(labels)

    def pods(self):
        return sorted(self.pods_state)

    def model_status(self, pod, model_name):
        return {v: "AVAILABLE" for v in self.pods_state[pod]["versions"]}


def gray_model():
    """A Lab model whose a*b* are 0: it returns the gray input, the baseline, to the pixel."""
    model = build_model("unet", 2, base_filters=4)
    for variable in model.get_layer("chroma").weights:
        variable.assign(np.zeros(variable.shape, np.float32))
    return model


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Three exports: v1 and v2 the same colourful model (v2 a copy of v1's folder), v3 a gray one
    (colourfulness 0: worse)."""
    root = tmp_path_factory.mktemp("export")
    v1 = export.export_saved_model(build_model("unet", 2, base_filters=4), "lab", str(root))
    v2 = shutil.copytree(v1, root / str(export.next_version(str(root))))
    made = [v1, str(v2), export.export_saved_model(gray_model(), "lab", str(root))]
    photos = tmp_path_factory.mktemp("held_out")
    write_photos(photos, 4, start=300)
    return str(root), [int(p.rsplit("/", 1)[1]) for p in made], str(photos)


@pytest.fixture
def serving(versions, monkeypatch):
    fake = FakeServing(versions[0])
    monkeypatch.setattr(launch_serving, "Cluster", lambda *args: fake)
    return fake


def run(*argv):
    return launch.main(["--poll_seconds=0", *argv], api=object())


def test_the_rendered_config_is_a_model_server_config():
    text = promote.render("colorizer", "gs://b/export", [2, 1], {"stable": 2, "previous": 1})
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    [model] = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("colorizer", "gs://b/export", "tensorflow")
    assert list(model.model_version_policy.specific.versions) == [1, 2] and dict(model.version_labels) == {
        "stable": 2,
        "previous": 1,
    }
    assert promote.parse("") == ([], {}), "the shipped empty config: TF Serving starts with no model"


@pytest.mark.parametrize(
    "new, old, refused",
    [
        ({"psnr": 22.0, "colourfulness": 20.0}, {"psnr": 22.1, "colourfulness": 21.0}, []),
        ({"psnr": 21.7, "colourfulness": 20.0}, {"psnr": 22.0, "colourfulness": 20.0}, ["PSNR"]),
        ({"psnr": 22.0, "colourfulness": 17.0}, {"psnr": 22.0, "colourfulness": 20.0}, ["colourfulness"]),
    ],
)
def test_gate_margins(new, old, refused):
    report = lambda m: {"120": {"model": m}, "full": None}  # noqa: E731
    reasons = promote.gate(report(new), report(old))
    assert [r.split()[0] for r in reasons] == refused


@pytest.mark.system
def test_first_promotion_then_an_equal_candidate_then_rollback(
    versions, serving, capsys, tmp_path, monkeypatch
):
    _, (v1, v2, _), photos = versions
    assert run("promote", str(v1), "--force") == 0
    assert all(p == {"versions": [v1], "labels": {"stable": v1}} for p in serving.pods_state.values())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert run("promote", str(v2), f"--image_dir={photos}", "--wait") == 0
    assert list(scratch.iterdir()) == [], "the gate's reports leave nothing behind"
    assert all(
        p == {"versions": [v1, v2], "labels": {"stable": v2, "previous": v1}}
        for p in serving.pods_state.values()
    )
    assert "curl -s http://localhost:8501/v1/models/colorizer/labels/stable" in capsys.readouterr().out
    assert serving.refused == 0, "every config was one TF Serving accepts"
    assert run("rollback") == 0
    assert all(p == {"versions": [v1], "labels": {"stable": v1}} for p in serving.pods_state.values())
    assert run("rollback") == 1 and "no previous live version" in capsys.readouterr().err


def test_a_worse_candidate_is_refused_unless_forced(versions, serving, capsys):
    _, (v1, _, v3), photos = versions
    run("promote", str(v1), "--force")
    capsys.readouterr()
    assert run("promote", str(v3), f"--image_dir={photos}") == 1
    err = capsys.readouterr().err
    # The untrained "colourful" model's PSNR may also lose to gray's (random weights): colourfulness must.
    assert err.startswith(f"error: refused: version {v3} vs live {v1}: ") and err.count("\n") == 1
    assert "colourfulness 0.0 is more than 10% below the live" in err
    assert promote.live_version(serving.text) == v1
    assert run("promote", str(v3), "--force") == 0 and promote.live_version(serving.text) == v3


def test_skipping_the_canary_step_would_be_refused_by_tf_serving(versions, serving):
    """Why promote writes two configs: moving `stable` straight to an unloaded version is dropped."""
    _, (v1, v2, _), _ = versions
    serving.write(promote.render("colorizer", serving.export_dir, [v1], {"stable": v1}), [v1])
    serving.write(
        promote.render("colorizer", serving.export_dir, [v1, v2], {"stable": v2, "previous": v1}), [v1, v2]
    )
    assert serving.refused == 2 and serving.pods_state["serving-a"]["labels"] == {"stable": v1}


def test_a_version_that_never_loads_times_out_in_one_line(versions, serving, monkeypatch, capsys):
    _, (v1, v2, _), _ = versions
    run("promote", str(v1), "--force")
    capsys.readouterr()
    monkeypatch.setattr(
        serving,
        "model_status",
        lambda pod, name: {v1: "AVAILABLE"} if pod == "serving-b" else {v1: "AVAILABLE", v2: "LOADING"},
    )
    assert run("promote", str(v2), "--force", "--timeout=0") == 1
    err = capsys.readouterr().err
    assert err == f"error: version {v2} not AVAILABLE within 0s on serving-a, serving-b\n"


def test_promote_needs_held_out_photos_or_force(versions, serving, capsys):
    _, (v1, v2, _), _ = versions
    run("promote", str(v1), "--force")
    assert run("promote", str(v2)) == 2 and "--image_dir" in capsys.readouterr().err


class ServingPods(FakeServing):
    """FakeServing's pods behind the fake API server (namespace colorizer).

    As on a cluster, a pod sees a new ConfigMap content when the pod is updated (the kubelet syncs
    it), and TF Serving answers GET /v1/models/NAME on port 8501 through the API server's pod proxy;
    a version a pod has just loaded reports LOADING once, and moving a label onto it before then is
    refused like a label moved to a version not loaded.
    """

    def __init__(self, cluster, export_dir):
        super().__init__(export_dir)
        self.cluster, self.loading = cluster, set()
        meta = lambda name: {"name": name, "namespace": "colorizer"}  # noqa: E731
        cluster.objects[("configmaps", promote.CONFIGMAP)] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(promote.CONFIGMAP),
            "data": {promote.CONFIG_KEY: ""},
        }
        cluster.objects[("configmaps", "colorizer-config")] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta("colorizer-config"),
            "data": {"EXPORT_DIR": export_dir},
        }
        cluster.pods = [
            {"metadata": meta(name), "status": {"phase": phase}}
            for name, phase in [("serving-a", "Running"), ("serving-b", "Running"), ("serving-old", "Failed")]
        ]
        cluster.on_patch, cluster.proxy = self.synced, self.answer

    def configmap(self):
        return self.cluster.objects[("configmaps", promote.CONFIGMAP)]

    def synced(self, plural, name):
        if plural != "pods" or name not in self.pods_state:
            return
        state, (versions, labels) = (
            self.pods_state[name],
            promote.parse(self.configmap()["data"][promote.CONFIG_KEY]),
        )
        if any(
            state["labels"].get(label, version) != version and (name, version) in self.loading
            for label, version in labels.items()
        ):
            self.refused += 1
            return
        before = set(state["versions"])
        self.reload(state, versions, labels)
        self.loading |= {(name, v) for v in set(state["versions"]) - before}

    def answer(self, pod, port, path):
        if (port, path) != ("8501", "/v1/models/colorizer"):
            return 404, {"error": f"nothing at :{port}{path}"}
        versions = sorted(self.pods_state[pod]["versions"], reverse=True)
        if not versions:
            return 404, {"error": "Could not find any versions of model colorizer"}
        statuses = [
            {
                "version": str(v),
                "state": "LOADING" if (pod, v) in self.loading else "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ]
        self.loading -= {(pod, v) for v in versions}
        return 200, {"model_version_status": statuses}


@pytest.fixture
def kube(versions, cluster):
    return ServingPods(cluster, versions[0])


def kube_run(kube, *argv):
    return launch.main(["--poll_seconds=0", *argv], api=kube.cluster.api())


def configmap_writes(kube):
    """(versions, labels, live history) of each ConfigMap PATCH (or PUT) the API server received."""
    return [
        (
            *promote.parse(body["data"][promote.CONFIG_KEY]),
            json.loads(body["metadata"]["annotations"][promote.HISTORY_ANNOTATION]),
        )
        for method, path, _, body in kube.cluster.requests
        if method in ("PATCH", "PUT") and "/configmaps/" in path
    ]


def the_configmap(kube):
    data = kube.configmap()
    return (
        *promote.parse(data["data"][promote.CONFIG_KEY]),
        json.loads(data["metadata"]["annotations"][promote.HISTORY_ANNOTATION]),
    )


PROXY = "/api/v1/namespaces/colorizer/pods/{}:8501/proxy/v1/models/colorizer"


def test_cluster_promotes_through_the_canary_step(versions, kube, capsys):
    export_dir, (v1, v2, _), photos = versions
    assert kube_run(kube, "promote", str(v1), "--force") == 0
    assert configmap_writes(kube) == [([v1], {"stable": v1}, [v1])]
    kube.cluster.requests.clear()
    capsys.readouterr()

    assert kube_run(kube, "promote", str(v2), f"--image_dir={photos}", "--wait") == 0
    assert configmap_writes(kube) == [
        ([v1, v2], {"stable": v1, "canary": v2}, [v1, v2]),
        ([v1, v2], {"stable": v2, "previous": v1}, [v1, v2]),
    ]
    assert the_configmap(kube) == ([v1, v2], {"stable": v2, "previous": v1}, [v1, v2])
    assert f'base_path: "{export_dir}"' in kube.configmap()["data"][promote.CONFIG_KEY]
    assert all(
        p == {"versions": [v1, v2], "labels": {"stable": v2, "previous": v1}}
        for p in kube.pods_state.values()
    )
    assert kube.refused == 0, "stable moved only once every pod had loaded the candidate"

    requests = [(m, p) for m, p, _, _ in kube.cluster.requests]
    cm = "/api/v1/namespaces/colorizer/configmaps/colorizer-serving-models"
    pod = "/api/v1/namespaces/colorizer/pods/{}"
    step = [
        ("PATCH", cm),
        ("GET", "/api/v1/namespaces/colorizer/pods"),
        ("PATCH", pod.format("serving-a")),
        ("PATCH", pod.format("serving-b")),
    ]
    first, second = [i for i, r in enumerate(requests) if r == ("PATCH", cm)]
    assert requests[first : first + 4] == requests[second : second + 4] == step, (
        "each write: ConfigMap, then every running pod"
    )
    polled = [PROXY.format("serving-a"), PROXY.format("serving-b")]
    assert [p for m, p in requests[first + 4 : second] if m == "GET" and "/proxy/" in p] == polled * 2, (
        "each pod polled until the candidate is AVAILABLE (LOADING at first), before stable moves"
    )
    assert [p for m, p in requests[second + 4 :] if "/proxy/" in p] == polled, (
        "--wait: the end state is polled too"
    )
    assert not any("serving-old" in p for _, p in requests), "a pod that is not Running is left alone"
    lists = [q for m, p, q, _ in kube.cluster.requests if p.endswith("/pods")]
    assert all(q["labelSelector"] == [launch_serving.SERVING_SELECTOR] for q in lists)
    assert set(kube.cluster.patch_types) == {"application/strategic-merge-patch+json"}
    stamps = {p["metadata"]["name"]: p["metadata"].get("annotations") for p in kube.cluster.pods}
    assert stamps["serving-a"] == stamps["serving-b"] and stamps["serving-a"]["colorizer.dev/models-config"]
    assert stamps["serving-old"] is None
    out = capsys.readouterr()
    assert out.out == (
        f"version {v2} is live on 2 pod(s); try it:\n"
        "  kubectl -n colorizer port-forward svc/colorizer-serving 8501:8501 &\n"
        "  curl -s http://localhost:8501/v1/models/colorizer/labels/stable\n"
    )
    assert out.err == f"promoted {v2} (previous: {v1})\n"


def test_cluster_refuses_a_worse_candidate_without_writing(versions, kube, capsys):
    _, (v1, _, v3), photos = versions
    kube_run(kube, "promote", str(v1), "--force")
    before = json.loads(json.dumps(kube.configmap()))
    kube.cluster.requests.clear()
    capsys.readouterr()
    assert kube_run(kube, "promote", str(v3), f"--image_dir={photos}", "--wait") == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: refused: version {v3} vs live {v1}: ")
        and "colourfulness 0.0 is more than" in err
    )
    assert [m for m, _, _, _ in kube.cluster.requests] == ["GET", "GET"], (
        "the two ConfigMaps read, nothing written"
    )
    assert kube.configmap() == before
    assert kube_run(kube, "promote", str(v3), "--force") == 0
    assert configmap_writes(kube) == [
        ([v1, v3], {"stable": v1, "canary": v3}, [v1, v3]),
        ([v1, v3], {"stable": v3, "previous": v1}, [v1, v3]),
    ]
    assert kube.refused == 0


def test_cluster_rollback_restores_the_previous_version(versions, kube, capsys):
    _, (v1, v2, _), _ = versions
    kube_run(kube, "promote", str(v1), "--force")
    kube_run(kube, "promote", str(v2), "--force")
    kube.cluster.requests.clear()
    capsys.readouterr()
    assert kube_run(kube, "rollback", "--wait") == 0
    assert configmap_writes(kube) == [
        ([v1, v2], {"stable": v2, "canary": v1}, [v1]),
        ([v1], {"stable": v1}, [v1]),
    ]
    assert the_configmap(kube) == ([v1], {"stable": v1}, [v1])
    assert all(p == {"versions": [v1], "labels": {"stable": v1}} for p in kube.pods_state.values())
    assert kube.refused == 0
    out = capsys.readouterr()
    assert f"version {v1} is live on 2 pod(s)" in out.out and out.err == f"rolled back to {v1} (was {v2})\n"
    assert kube_run(kube, "rollback") == 1 and "no previous live version" in capsys.readouterr().err


def test_cluster_model_status_through_the_pod_proxy(versions, kube):
    _, (v1, _, _), _ = versions
    serving = launch_serving.Cluster(kube.cluster.api(), "colorizer")
    assert serving.model_status("serving-a", "colorizer") == {}, (
        "TF Serving's 404 before any version is configured"
    )
    kube_run(kube, "promote", str(v1), "--force")
    assert serving.model_status("serving-a", "colorizer") == {v1: "LOADING"}
    assert serving.model_status("serving-a", "colorizer") == {v1: "AVAILABLE"}
    assert serving.model_status("serving-gone", "colorizer") == {}, (
        "the API server's 404 for a pod deleted meanwhile"
    )
    assert kube.cluster.requests[0][1] == PROXY.format("serving-a")


def test_cluster_a_forbidden_pod_proxy_is_an_error_not_a_wait(versions, kube, capsys):
    """Without RBAC `get pods/proxy` the API server answers 403: say so at once, not "not AVAILABLE"
    after --timeout."""
    _, (v1, _, _), _ = versions
    message = 'pods "serving-a" is forbidden: User "dev@example.com" cannot get resource "pods/proxy"'
    kube.cluster.proxy = lambda pod, port, path: (
        403,
        {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403, "message": message},
    )
    assert kube_run(kube, "promote", str(v1), "--force", "--wait", "--timeout=60") == 1
    assert capsys.readouterr().err == (
        f"error: reading /v1/models/colorizer of pod serving-a through the API server: HTTP 403: {message}\n"
    )
    assert len([p for _, p, _, _ in kube.cluster.requests if "/proxy/" in p]) == 1


def test_cluster_a_pod_that_never_answers_is_not_ready_yet(versions, kube, monkeypatch):
    """The API server lets a proxied request hang; each status poll gives up after its own timeout."""
    monkeypatch.setattr(launch_serving, "PROXY_TIMEOUT_SECONDS", 0.5)
    kube.cluster.proxy = lambda pod, port, path: (time.sleep(3), (200, {}))[1]
    serving = launch_serving.Cluster(kube.cluster.api(), "colorizer")
    start = time.monotonic()
    assert serving.model_status("serving-a", "colorizer") == {} and time.monotonic() - start < 2.5
