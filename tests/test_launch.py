"""`python -m trainer.launch`: the objects it builds, and its API calls against a local fake API server.

The fake server (tests/fake_kubernetes.py) answers the Kubernetes REST paths the `kubernetes` client
uses on 127.0.0.1 and records every request, so the tests assert on what would reach a real cluster.
"""

import base64
import http.server
import json
import subprocess
import sys
import threading
import time

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests import fake_kubernetes
from tests.test_manifests import ROOT, SCHEMAS, check_indexed_job
from trainer.cluster import image as launch_image
from trainer.cluster import launch

DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGE = f"europe-docker.pkg.dev/p/colorizer/trainer@{DIGEST}"
cluster = fake_kubernetes.cluster  # the fixture


def dry_run(capsys, *argv):
    assert launch.main(["submit", f"--image={IMAGE}", "--dry_run", *argv]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_dry_run_prints_a_valid_single_node_job(capsys):
    [job] = dry_run(capsys, "--name=run1", "--gpus=2", "--arg=--epochs=5", "--arg=--nomixed_precision")
    kubernetes_validate.validate(job, "1.33", strict=True)
    assert job["metadata"]["name"] == "run1" and job["metadata"]["labels"]["colorizer.dev/run"] == "run1"
    c = container(job)
    assert c["image"] == IMAGE
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert "--model_dir=$(MODEL_DIR)/run1" in c["args"] and "--train_data=$(TRAIN_DATA)" in c["args"]
    assert c["args"][-2:] == ["--epochs=5", "--nomixed_precision"]
    assert "--epochs=30" not in c["args"] and "--mixed_precision" not in c["args"]


def test_dry_run_multinode_is_a_wired_indexed_job(capsys):
    objects = dry_run(capsys, "--name=big", "--workers=4", "--train_data=gs://b/d/train-*", "--spot")
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    check_indexed_job(objects)
    job, service = objects
    assert job["spec"]["completions"] == 4 and service["metadata"]["name"] == "big-workers"
    assert service["spec"]["selector"]["colorizer.dev/run"] == "big"
    assert "--strategy=multi_worker" in container(job)["args"]
    assert "--train_data=gs://b/d/train-*" in container(job)["args"]
    assert job["spec"]["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-spot"] == "true"


def test_dry_run_tfjob_matches_the_crd(capsys):
    [tfjob] = dry_run(
        capsys, "--name=tf", "--workers=3", "--kind=tfjob", "--gpus=0", "--cpu=4", "--memory=8Gi"
    )
    jsonschema.validate(tfjob, json.loads((SCHEMAS / "tfjob-v1.9.0.schema.json").read_text())["schema"])
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3
    spec = worker["template"]["spec"]
    c = spec["containers"][0]
    assert c["name"] == "tensorflow" and "nvidia.com/gpu" not in c["resources"]["limits"]
    assert (
        c["resources"]["limits"]["cpu"] == "4"
        and "cloud.google.com/gke-accelerator" not in spec["nodeSelector"]
    )
    assert not any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--name=Bad_Name"],
        ["--workers=0"],
        ["--gpus=-1"],
        ["--kind=tfjob"],
        ["--arg=--epochz=3"],
        ["--manifests=/nonexistent"],
        ["--max_hours=0"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, capsys):
    assert launch.main(["submit", f"--image={IMAGE}", "--dry_run", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")


@pytest.mark.parametrize(
    "arg",
    [
        "--arg=--epochs=abc",
        "--arg=--model=foo",
        "--arg=--epochs",
        "--arg=--noepochs",
        "--arg=--jit_compile=maybe",
        "--arg=--nojit_compile=true",
        "--arg=--strategy=ps",
        "--arg=--seed=1.5",
        "--arg=epochs=3",
        "--arg=--epochz=3",
    ],
)
def test_a_bad_trainer_arg_is_refused_in_one_line_naming_it(arg, capsys):
    """Names and values are checked against trainer/train/config.py's definitions of trainer.task's flags."""
    assert launch.main(["submit", f"--image={IMAGE}", "--dry_run", arg]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --arg={arg.split('=', 1)[1]!r}: ")


def test_every_kind_of_trainer_flag_is_accepted(capsys):
    """Booleans in all three spellings, and flags that are not config fields (the multi-node manifests')."""
    extra = [
        "--nojit_compile",
        "--augment=false",
        "--sync_batchnorm",
        "--mixed_precision",
        "--strategy=multi_worker",
        "--peer_timeout_seconds=60",
        "--collective_timeout_seconds=0",
        "--seed=7",
        "--learning_rate=3e-4",
        "--model=autoencoder",
        "--tensorboard_dir=gs://b/tb",
    ]
    [job] = dry_run(capsys, "--name=flags", *(f"--arg={a}" for a in extra))
    assert container(job)["args"][-len(extra) :] == extra


SUBMIT = [
    "submit",
    f"--image={IMAGE}",
    "--name=fast",
    "--dry_run",
    "--arg=--epochs=3",
    "--arg=--nojit_compile",
]


def test_submit_dry_run_loads_no_tensorflow_and_takes_well_under_a_second():
    """The --arg check reads the trainer's flags from trainer/train/config.py (TensorFlow takes seconds)."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trainer.launch", *SUBMIT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {
        line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")
    }
    assert "trainer.train.config" in imported and "yaml" in imported, "importtime lists every module"
    assert not {m for m in imported if m.split(".")[0] == "tensorflow"}
    timings = []
    for _ in range(3):  # the best of three: a busy CI machine's stalls are not the launcher's cost
        start = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "trainer.launch", *SUBMIT],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        timings.append(time.monotonic() - start)
    seconds = min(timings)
    [job] = list(yaml.safe_load_all(run.stdout))
    assert container(job)["args"][-2:] == ["--epochs=3", "--nojit_compile"]
    print(f"python -m trainer.launch {' '.join(SUBMIT)}: {seconds:.2f} s")
    assert seconds < 1.5


@pytest.mark.parametrize(
    "argv, where",
    [
        (["--name=a"], ["spec"]),
        (["--name=b", "--workers=3"], ["spec"]),
        (["--name=c", "--workers=2", "--kind=tfjob"], ["spec", "runPolicy"]),
    ],
)
def test_max_hours_sets_the_deadline(argv, where, capsys):
    """Preemptions are ignored by the failure policies, so a deadline ends a run that never finishes."""
    obj = dry_run(capsys, *argv, "--max_hours=1.5")[0]
    for key in where:
        obj = obj[key]
    assert obj["activeDeadlineSeconds"] == 5400


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    """Answers HEAD /v2/<repo>/manifests/<tag> like a registry: the digest of known tags, 404 otherwise."""

    tags, seen = {"colorizer/trainer:v1": DIGEST}, []

    def log_message(self, *args):
        pass

    def do_HEAD(self):  # noqa: N802  (http.server's naming)
        FakeRegistry.seen.append(
            (self.path, self.headers.get("Accept", ""), self.headers.get("Authorization"))
        )
        repo, _, tag = self.path.removeprefix("/v2/").partition("/manifests/")
        digest = self.tags.get(f"{repo}:{tag}")
        self.send_response(200 if digest else 404)
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()


@pytest.fixture
def registry():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeRegistry.seen = []
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_tag_is_resolved_to_its_digest(registry, capsys):
    assert launch.main(["submit", f"--image={registry}/colorizer/trainer:v1", "--name=r", "--dry_run"]) == 0
    [job] = list(yaml.safe_load_all(capsys.readouterr().out))
    assert container(job)["image"] == f"{registry}/colorizer/trainer@{DIGEST}"
    [(path, accept, auth)] = FakeRegistry.seen
    assert path == "/v2/colorizer/trainer/manifests/v1" and "manifest.list.v2+json" in accept and auth is None


def test_google_registries_get_an_access_token(registry, monkeypatch):
    monkeypatch.setattr(launch_image, "is_google_registry", lambda host: host == registry)
    monkeypatch.setattr(launch_image, "google_access_token", lambda: "ya29.token")
    assert launch_image.pinned_image(f"{registry}/colorizer/trainer:v1").endswith(DIGEST)
    assert FakeRegistry.seen[0][2] == "Basic " + base64.b64encode(b"oauth2accesstoken:ya29.token").decode()


GOOGLE_HOSTS = ["gcr.io", "us.gcr.io", "GCR.io:443", "europe-docker.pkg.dev", "us-central1-docker.pkg.dev"]
LOOK_ALIKES = [
    "evilgcr.io",
    "gcr.io.evil.com",
    "evil-docker.pkg.dev.attacker.com",
    "docker.pkg.dev",
    "pkg.dev",
    "evil.com@gcr.io",
    "registry-1.docker.io",
    "localhost:5000",
    "[::1]:5000",
]


def test_only_google_registry_hosts_are_google_registries():
    assert all(launch_image.is_google_registry(host) for host in GOOGLE_HOSTS)
    assert not any(launch_image.is_google_registry(host) for host in LOOK_ALIKES)


@pytest.mark.parametrize("host", GOOGLE_HOSTS + LOOK_ALIKES)
def test_the_access_token_goes_to_google_registries_only(host, monkeypatch):
    """The request `pinned_image` sends (urlopen faked: no network) has the token only for Google's."""
    sent = []

    class Answer:
        headers = {"Docker-Content-Digest": DIGEST}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(request, timeout):
        sent.append(request)
        return Answer()

    monkeypatch.setattr(launch_image.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(launch_image, "google_access_token", lambda: "ya29.token")
    assert launch_image.pinned_image(f"{host}/p/colorizer/trainer:v1").endswith(DIGEST)
    [request] = sent
    assert (
        request.full_url.startswith(("https://", "http://"))
        and "/v2/p/colorizer/trainer/" in request.full_url
    )
    authorization = request.get_header("Authorization")
    if host in GOOGLE_HOSTS:
        assert authorization == "Basic " + base64.b64encode(b"oauth2accesstoken:ya29.token").decode()
    else:
        assert authorization is None


@pytest.mark.parametrize("image", ["{registry}/colorizer/trainer:nope", "127.0.0.1:9/colorizer/trainer:v1"])
def test_an_unresolvable_tag_is_refused_in_one_line(image, registry, capsys):
    assert launch.main(["submit", f"--image={image.format(registry=registry)}", "--name=r", "--dry_run"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --image=") and "@sha256:" in line and "docker inspect" in line


def test_a_pinned_image_is_used_as_is():
    assert launch_image.pinned_image(IMAGE) == IMAGE
    assert launch_image.split_image("tensorflow/serving:2.20.0") == (
        "registry-1.docker.io",
        "tensorflow/serving",
        "2.20.0",
    )


def test_missing_required_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        launch.main(["submit", "--dry_run"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def pod(name, phase, index="0", created="2026-01-01T00:00:00Z", scheduled=None):
    status = {"phase": phase}
    if scheduled:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduled}
        ]
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {"batch.kubernetes.io/job-completion-index": index},
        },
        "status": status,
    }


def submit(cluster, *argv):
    return launch.main(
        ["--poll_seconds=0.01", "--schedule_timeout=5", "submit", f"--image={IMAGE}", *argv],
        api=cluster.api(),
    )


def test_submit_creates_follows_the_chief_and_succeeds(cluster, capsys):
    cluster.pods = [pod("big-0-x", "Running"), pod("big-1-y", "Running", index="1")]
    cluster.logs = {"big-0-x": "epoch 1 val_loss 0.01\nSavedModel: gs://b/export/17\n"}
    cluster.statuses = [{}, {}, {"conditions": [{"type": "Complete", "status": "True"}]}]
    assert submit(cluster, "--name=big", "--workers=2") == 0
    out = capsys.readouterr()
    assert "SavedModel: gs://b/export/17" in out.out and "succeeded" in out.err
    posts = [r for r in cluster.requests if r[0] == "POST"]
    assert [p[1] for p in posts] == [
        "/apis/batch/v1/namespaces/colorizer/jobs",
        "/api/v1/namespaces/colorizer/services",
    ]
    assert posts[0][3]["spec"]["completions"] == 2
    assert posts[1][3]["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "big", "uid": "uid-big"}
    ]
    lists = [r for r in cluster.requests if r[1].endswith("/pods")]
    assert lists[0][2]["labelSelector"] == ["batch.kubernetes.io/job-name=big"]
    logs = [r for r in cluster.requests if r[1].endswith("/log")]
    assert [r[1] for r in logs] == ["/api/v1/namespaces/colorizer/pods/big-0-x/log"]
    assert logs[0][2]["follow"] == ["true"]


def test_a_restarted_chief_is_followed_too(cluster, capsys):
    cluster.pods = [pod("r-0-a", "Failed")]
    cluster.logs = {"r-0-a": "step 500\nSIGTERM: checkpoint saved\n", "r-0-b": "resuming from step 500\n"}
    cluster.statuses = [{}]

    def replace_pod():  # the Job controller's replacement shows up once the first log has ended
        cluster.pods = [pod("r-0-a", "Failed"), pod("r-0-b", "Running", created="2026-01-01T00:05:00Z")]

    def complete():
        cluster.statuses = [{"conditions": [{"type": "Complete", "status": "True"}]}]

    cluster.after_log = {"r-0-a": replace_pod, "r-0-b": complete}
    assert submit(cluster, "--name=r") == 0
    out = capsys.readouterr().out
    assert out.index("checkpoint saved") < out.index("resuming from step 500")
    assert out.count("step 500\n") == 2  # each pod's log once


def test_submit_reports_the_failure_reason(cluster, capsys):
    cluster.pods = [pod("f-0-a", "Failed")]
    cluster.logs = {"f-0-a": "error: --train_data='gs://b/x*' matches no files\n"}
    cluster.statuses = [
        {},
        {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "message": "Container trainer exited with 2",
                }
            ]
        },
    ]
    assert submit(cluster, "--name=f") == 1
    assert "failed: PodFailurePolicy: Container trainer exited with 2" in capsys.readouterr().err


def test_an_unschedulable_chief_times_out_with_the_reason(cluster, capsys):
    cluster.pods = [
        pod("p-0-a", "Pending", scheduled="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    ]
    cluster.statuses = [{}]
    assert (
        launch.main(
            ["--poll_seconds=0.01", "--schedule_timeout=0", "submit", f"--image={IMAGE}", "--name=p"],
            api=cluster.api(),
        )
        == 1
    )
    assert "Insufficient nvidia.com/gpu" in capsys.readouterr().err


def test_a_chief_without_status_yet_counts_as_pending(cluster, capsys):
    """A pod listed without a status (its model's status is None) is not started yet: no crash, no log."""
    cluster.pods = [{"metadata": pod("n-0-a", "Pending")["metadata"]}]
    cluster.statuses = [{}]
    assert (
        launch.main(
            ["--poll_seconds=0.01", "--schedule_timeout=0", "submit", f"--image={IMAGE}", "--name=n"],
            api=cluster.api(),
        )
        == 1
    )
    assert "the pod has no status yet" in capsys.readouterr().err
    assert not [r for r in cluster.requests if r[1].endswith("/log")]
    assert launch.main(["status", "n"], api=cluster.api()) == 0  # the Job submit created
    assert "pod n-0-a: Pending" in capsys.readouterr().out


def test_an_api_error_is_one_line(cluster, capsys):
    cluster.fail_create = (
        409,
        {
            "kind": "Status",
            "status": "Failure",
            "reason": "AlreadyExists",
            "code": 409,
            "message": 'jobs.batch "dup" already exists',
        },
    )
    assert submit(cluster, "--name=dup", "--no_wait") == 1
    assert (
        capsys.readouterr().err.strip()
        == 'error: creating Job dup: HTTP 409: jobs.batch "dup" already exists'
    )


def test_status_and_delete_find_a_tfjob(cluster, capsys):
    cluster.objects[("tfjobs", "tf")] = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": "tf"},
    }
    cluster.statuses = [{"conditions": [{"type": "Running", "status": "True", "reason": "TFJobRunning"}]}]
    cluster.pods = [pod("tf-worker-0", "Running")]
    assert launch.main(["status", "tf"], api=cluster.api()) == 0
    out = capsys.readouterr().out
    assert (
        "TFJob colorizer/tf" in out and "Running=True TFJobRunning" in out and "tf-worker-0: Running" in out
    )
    assert launch.main(["delete", "tf"], api=cluster.api()) == 0
    method, path, _, body = cluster.requests[-1]
    assert (method, path) == ("DELETE", "/apis/kubeflow.org/v1/namespaces/colorizer/tfjobs/tf")
    assert body["propagationPolicy"] == "Background"


def test_unknown_run_is_an_error(cluster, capsys):
    assert launch.main(["delete", "ghost"], api=cluster.api()) == 1
    assert capsys.readouterr().err.strip() == "error: no Job or TFJob named ghost in namespace colorizer"


def test_a_worker_takes_every_gpu_of_its_node_by_default(capsys):
    from trainer.cluster.manifests import GPUS_PER_NODE

    job, _ = dry_run(capsys, "--name=big", "--workers=2")
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == str(GPUS_PER_NODE) == "2"


def test_status_shows_the_runs_latest_epoch_step_and_eta_from_the_chiefs_log(cluster, capsys):
    tfjob = {"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "tf"}}
    cluster.objects[("tfjobs", "tf")] = tfjob
    cluster.statuses = [{"conditions": [{"type": "Running", "status": "True", "reason": "TFJobRunning"}]}]
    cluster.pods = [pod("tf-worker-0", "Running")]
    epoch = "epoch 12/30 step 4800 loss 5.1 val_loss 5.0 (410 images/s); ETA 3.5 h"
    inside = "epoch 13/30 step 5000/5200 loss 5.0000 (420 images/s); epoch ETA 4 min"
    lines = [json.dumps({"severity": "INFO", "message": m}) for m in (epoch, inside)]
    cluster.logs["tf-worker-0"] = "\n".join(lines) + "\n"
    assert launch.main(["status", "tf"], api=cluster.api()) == 0
    out = capsys.readouterr().out
    assert "progress (tf-worker-0): epoch 13/30, step 5000; this epoch ends in about 4 min" in out
    cluster.logs["tf-worker-0"] = f"I1205 03:21:29.275607 1 actions.py:63] {epoch}\n"
    assert launch.main(["status", "tf"], api=cluster.api()) == 0
    out = capsys.readouterr().out
    assert "progress (tf-worker-0): epoch 12/30, step 4800; the run ends in about 3.5 h" in out
