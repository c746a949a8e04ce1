"""The colorize Indexed Job (k8s/components/colorize, k8s/overlays/colorize) and `trainer.launch colorize`.

The generic checks (strict schemas, hardening, Workload Identity, pod security, checkov) run over it
in tests/test_manifests.py; these are the colorize-specific contracts: the Indexed Job environment
that trainer.client reads (trainer/data/photo_source.py, `task_defaults`), its flags, memory for the
in-process model, and the exit codes of trainer/errors.py through the Job controller's rules
(tests/controllers.py), exit 5 failing its index only.
"""

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from absl import flags
from kubernetes.utils import parse_quantity

from tests import fake_kubernetes
from tests.controllers import JobController, PodFailure
from tests.test_docs import DOCS, PINNED, doc_blocks
from tests.test_launch import pod
from tests.test_manifests import FLAG, K8S_VERSION, ROOT, _export_limits, load
from trainer.cluster import launch
from trainer.cluster.colorize_job import REFUSED_FLAGS, client_flags
from trainer.data.photo_source import ENV_NUM_TASKS
from trainer.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_SKIPPED,
    EXIT_UNEXPECTED,
    RETRIABLE_EXIT_CODES,
)
from trainer.serve import limits

cluster = fake_kubernetes.cluster  # the fixture
CONTAINER = "colorize"


def check_colorize_container(container, where: str) -> int:
    """trainer.client with flags it defines, the model in-process, one input last; the task from the
    environment."""
    assert container["command"] == ["python", "-m", "trainer.client"], where
    known = client_flags()
    *flag_args, source = container["args"]
    assert not source.startswith("-"), f"{where}: the input comes last"
    for arg in flag_args:
        match = FLAG.match(arg)
        assert match and match.group(1) in known, f"{where}: unknown trainer.client flag {arg!r}"
        assert match.group(1) not in REFUSED_FLAGS, f"{where}: {arg} is the Job's to set"
    assert any(a.startswith("--local_model=") for a in flag_args), f"{where}: the model runs in-process"
    env = {e["name"]: e for e in container["env"]}
    assert int(env[ENV_NUM_TASKS]["value"]) >= 1, where
    threads = env["TF_NUM_INTRAOP_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads == {"containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}, where
    return 1


def colorize_job(objects):
    [job] = [d for d in objects if d["kind"] == "Job"]
    return job, job["spec"]["template"]["spec"]["containers"][0]


def check_colorize_job(job, container):
    """Indexed, N tasks everywhere, independent retries per index, errors.py's exit codes, CPU only."""
    spec = job["spec"]
    env = {e["name"]: e for e in container["env"]}
    assert spec["completionMode"] == "Indexed"
    assert int(env[ENV_NUM_TASKS]["value"]) == spec["completions"] == spec["parallelism"]
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec and "successPolicy" not in spec
    on_exit = {"containerName": CONTAINER, "operator": "In"}
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {**on_exit, "values": [EXIT_CONFIG, EXIT_DATA]}},
        {"action": "FailIndex", "onExitCodes": {**on_exit, "values": [EXIT_SKIPPED]}},
        {"action": "Ignore", "onExitCodes": {**on_exit, "values": list(RETRIABLE_EXIT_CODES)}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    assert spec["activeDeadlineSeconds"] > 0 and spec["podReplacementPolicy"] == "Failed"
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Never" and container["name"] == CONTAINER
    assert "cloud.google.com/gke-accelerator" not in pod_spec.get("nodeSelector", {})
    assert not any("nvidia.com/gpu" in container["resources"][k] for k in ("requests", "limits"))
    assert container["resources"]["requests"] == container["resources"]["limits"]


def _flag(container, name, default):
    return next((a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{name}=")), default)


def test_colorize_overlay_is_an_indexed_job_of_independent_tasks():
    objects = load("overlay:colorize")
    job, container = colorize_job(objects)
    check_colorize_job(job, container)
    check_colorize_container(container, "overlay:colorize")
    assert job["metadata"]["name"] == "colorizer-colorize"
    assert not any(d["kind"] == "Job" and d["metadata"]["name"] == "colorizer-train" for d in objects)
    [config] = [
        d for d in objects if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "colorizer-config"
    ]
    assert container["args"][-1] == "$(PHOTOS_DIR)"
    assert {"--local_model=$(EXPORT_DIR)", "--output_dir=$(COLORIZED_DIR)"} <= set(container["args"])
    buckets = {config["data"][k].split("/")[2] for k in ("PHOTOS_DIR", "EXPORT_DIR", "COLORIZED_DIR")}
    assert len(buckets) == 1 and config["data"]["COLORIZED_DIR"].startswith("gs://")
    assert config["data"]["COLORIZED_DIR"].rstrip("/") != config["data"]["PHOTOS_DIR"].rstrip("/")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "colorizer-colorize"
    [policy] = [
        d for d in objects if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("colorize")
    ]
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "colorize"}},
        "policyTypes": ["Ingress"],
    }, "nothing connects to a colorize pod"


def test_colorize_memory_holds_every_request_in_flight_at_the_export_limit():
    """Each of --parallel threads composes its batch in-process as a TF Serving batch thread would
    (docs/SERVING.md "Limits"), at the --max_pixels the production exports are made with."""
    objects = load("overlay:colorize")
    job, container = colorize_job(objects)
    [config] = [d for d in objects if d["metadata"]["name"] == "colorizer-config"]
    max_pixels = _export_limits()[config["data"]["EXPORT_DIR"]]
    parallel, batch = int(_flag(container, "parallel", 2)), int(_flag(container, "batch_size", 4))
    needed = limits.serving_memory_bytes(max_pixels, parallel, batch)
    limit = parse_quantity(container["resources"]["limits"]["memory"])
    assert needed <= limit, f"{needed / 1e9:.1f} GB needed at {max_pixels} pixels, limit {limit / 1e9:.1f} GB"
    assert int(_flag(container, "max_pixels", limits.DEFAULT_MAX_PIXELS)) >= max_pixels, "would refuse photos"


def test_client_flags_leave_the_process_wide_flags_alone():
    known = client_flags()
    assert {"local_model", "output_dir", "parallel", "num_tasks", "task_index", "overwrite"} <= set(known)
    assert "local_model" not in flags.FLAGS and client_flags() is not known, "fresh each time"


# The exit codes trainer.client returns (trainer/errors.py) and what the Job does with each.
def _policy_job():
    return colorize_job(load("overlay:colorize"))[0]


@pytest.mark.parametrize("code", [EXIT_CONFIG, EXIT_DATA])
def test_bad_flags_and_bad_data_fail_the_job_at_once(code):
    jc = JobController(_policy_job())
    assert jc.fail(PodFailure(code, container=CONTAINER, index=2)) == "FailJob"
    assert jc.failed and jc.reason == "PodFailurePolicy"


def test_skipped_photos_fail_their_index_only_and_the_others_finish():
    """Exit 5 (every good photo written, the bad ones named): that index is not retried, the others
    run on, and the Job ends Failed listing it (the kubernetes.io FailIndex example, tests/controllers.py)."""
    job = _policy_job()
    jc = JobController(job)
    assert jc.fail(PodFailure(EXIT_SKIPPED, container=CONTAINER, index=1)) == "FailIndex"
    assert jc.failed_indexes == {1} and not jc.failed, "the other tasks keep going"
    for index in (0, 2, 3):  # preempted once each, then they succeed
        assert jc.fail(PodFailure(143, disruption_target=True, container=CONTAINER, index=index)) == "Ignore"
    assert not jc.failed
    jc.all_indexes_done()
    assert jc.failed and jc.reason == "FailedIndexes" and jc.failed_indexes == {1}


def test_retriable_codes_and_disruptions_never_fail_a_task():
    jc = JobController(_policy_job())
    for code in RETRIABLE_EXIT_CODES * 50:
        assert jc.fail(PodFailure(code, container=CONTAINER, index=code % 4)) == "Ignore"
    for code in (None, 137, 143):
        assert jc.fail(PodFailure(code, disruption_target=True, container=CONTAINER)) == "Ignore"
    assert not jc.failed and jc.counted == 0 and not jc.failed_indexes


def test_bugs_and_ooms_use_up_their_index_s_retries_only():
    job = _policy_job()
    jc = JobController(job)
    for attempt in range(job["spec"]["backoffLimitPerIndex"]):
        assert (
            jc.fail(PodFailure(EXIT_UNEXPECTED if attempt % 2 else 137, container=CONTAINER, index=3))
            == "Count"
        )
        assert not jc.failed_indexes
    jc.fail(PodFailure(EXIT_UNEXPECTED, container=CONTAINER, index=3))
    assert jc.failed_indexes == {3} and not jc.failed, "a failed index doesn't stop the others"


def test_a_deadline_ends_a_job_that_keeps_being_preempted():
    jc = JobController(_policy_job())
    while not jc.failed:
        jc.fail(PodFailure(143, disruption_target=True, container=CONTAINER))
        jc.advance(3600)
    assert jc.reason == "DeadlineExceeded" and jc.elapsed <= 7 * 24 * 3600


def dry_run(capsys, *argv):
    assert launch.main(["colorize", f"--image={PINNED}", "--dry_run", *argv]) == 0, capsys.readouterr().err
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_launch_colorize_dry_run_builds_a_valid_job(capsys):
    [job] = dry_run(
        capsys,
        "--name=col-b",
        "--tasks=8",
        "--input_dir=gs://b/scans/",
        "--output_dir=gs://b/colorized-v2",
        "--model=gs://b/export/1712340000",
        "--cpu=4",
        "--memory=16Gi",
        "--spot",
        "--arg=--overwrite",
        "--arg=--parallel=3",
        "--max_hours=2",
    )
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    check_colorize_job(job, container)
    check_colorize_container(container, "launch colorize")
    assert job["metadata"]["name"] == "col-b" and job["metadata"]["labels"]["colorizer.dev/run"] == "col-b"
    assert job["spec"]["completions"] == 8 and job["spec"]["activeDeadlineSeconds"] == 7200
    assert container["image"] == PINNED
    assert container["args"] == [
        "--batch_size=1",
        "--local_model=gs://b/export/1712340000",
        "--output_dir=gs://b/colorized-v2",
        "--overwrite",
        "--parallel=3",
        "gs://b/scans/",
    ]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "2Gi"}
    assert job["spec"]["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-spot"] == "true"


def test_launch_colorize_defaults_are_the_manifest_s(capsys):
    [job] = dry_run(capsys, "--name=col-a")
    [manifest] = [d for d in load("components/colorize/colorize.yaml") if d["kind"] == "Job"]
    container, original = (j["spec"]["template"]["spec"]["containers"][0] for j in (job, manifest))
    assert container["args"] == original["args"] and container["resources"] == original["resources"]
    assert (
        job["spec"]["completions"] == 4
        and job["spec"]["podFailurePolicy"] == manifest["spec"]["podFailurePolicy"]
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--tasks=0"],
        ["--name=Bad_Name"],
        ["--arg=--num_tasks=3"],
        ["--arg=--task_index=1"],
        ["--arg=--server=http://colorizer-serving:8501"],
        ["--arg=--paralel=3"],
        ["--arg=--parallel=many"],
        ["--input_dir=photos/"],
        ["--model=export"],
        ["--max_hours=0"],
    ],
)
def test_launch_colorize_bad_input_is_one_line_and_exit_2(argv, capsys):
    assert launch.main(["colorize", f"--image={PINNED}", "--dry_run", *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


def test_launch_colorize_dry_run_loads_no_tensorflow():
    """The --arg check reads trainer.client's flags, which import no TensorFlow."""
    run = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "trainer.launch",
            "colorize",
            f"--image={PINNED}",
            "--dry_run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {
        line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")
    }
    assert "trainer.serve.client" in imported, "importtime lists every module"
    assert not {m for m in imported if m.split(".")[0] == "tensorflow"}


def test_launch_colorize_creates_the_job_streams_task_0_and_succeeds(cluster, capsys):
    cluster.pods = [pod("c-0-x", "Running"), pod("c-1-y", "Running", index="1")]
    cluster.logs = {"c-0-x": "120/400 photos (1 skipped), 3.0 photos/s, ETA 2 min\n"}
    cluster.statuses = [{}, {}, {"conditions": [{"type": "Complete", "status": "True"}]}]
    argv = [
        "--poll_seconds=0.01",
        "--schedule_timeout=5",
        "colorize",
        f"--image={PINNED}",
        "--name=c",
        "--tasks=2",
    ]
    assert launch.main(argv, api=cluster.api()) == 0
    out = capsys.readouterr()
    assert "ETA 2 min" in out.out and "succeeded" in out.err and "2 colorize tasks" in out.err
    [post] = [r for r in cluster.requests if r[0] == "POST"]
    assert post[1] == "/apis/batch/v1/namespaces/colorizer/jobs" and post[3]["spec"]["completions"] == 2


def test_launch_colorize_reports_failed_indexes(cluster, capsys):
    """A task that skipped photos fails its index; the launcher waits for the rest, then exits 1."""
    cluster.pods = [pod("c-0-x", "Succeeded")]
    cluster.logs = {"c-0-x": "colorized 3 photo(s) into gs://b/colorized; 0 already done; 0 skipped\n"}
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "FailedIndexes",
        "message": "Job has failed indexes",
    }
    cluster.statuses = [{}, {"failedIndexes": "1", "conditions": [failed]}]
    argv = [
        "--poll_seconds=0.01",
        "--schedule_timeout=5",
        "colorize",
        f"--image={PINNED}",
        "--name=c",
        "--tasks=2",
    ]
    assert launch.main(argv, api=cluster.api()) == 1
    assert "failed: FailedIndexes: Job has failed indexes" in capsys.readouterr().err


def doc_colorize_commands():
    for path in (DOCS, ROOT / "README.md"):
        for _, block in doc_blocks(path):
            for command in block.replace("\\\n", " ").splitlines():
                command = command.split("#")[0].strip()
                if command.startswith("python -m trainer.launch colorize"):
                    yield command


def test_the_docs_launch_colorize():
    assert any(True for _ in doc_colorize_commands())


@pytest.mark.parametrize("command", sorted(set(doc_colorize_commands())))
def test_doc_colorize_commands_dry_run(command, capsys):
    """Every `trainer.launch colorize` in the docs parses and builds a valid Job (with --dry_run)."""
    argv = (
        command.replace("$IMAGE_DIGEST", PINNED).replace("$IMAGE", PINNED).replace("$BUCKET", "b").split()[3:]
    )
    assert launch.main(argv + ["--dry_run"]) == 0, capsys.readouterr().err
    for obj in yaml.safe_load_all(capsys.readouterr().out):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
