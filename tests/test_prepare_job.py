"""The prepare Indexed Job (k8s/components/prepare, k8s/overlays/prepare) and `trainer.launch prepare`.

The generic checks (strict schemas, hardening, Workload Identity, checkov) run over it in
tests/test_manifests.py; these are the prepare-specific contracts: the Indexed Job environment that
trainer/data/prepare.py reads, independent per-index retries, and the exit-code policy of trainer/errors.py.
"""

import kubernetes_validate
import pytest
import yaml

from tests import fake_kubernetes
from tests.test_docs import DOCS, PINNED, doc_blocks
from tests.test_launch import pod
from tests.test_manifests import FLAG, K8S_VERSION, ROOT, load
from trainer.cluster import launch
from trainer.cluster.prepare_job import prepare_flags
from trainer.data.photo_source import ENV_NUM_TASKS, ENV_RUN_NAME

cluster = fake_kubernetes.cluster  # the fixture
JOB_NAME_LABEL = "metadata.labels['batch.kubernetes.io/job-name']"


def check_prepare_container(container, where: str) -> int:
    """The prepare container runs trainer.prepare with flags it defines; the task is from the environment."""
    assert container["command"] == ["python", "-m", "trainer.prepare"], where
    known = prepare_flags()
    for arg in container["args"]:
        match = FLAG.match(arg)
        assert match and match.group(1) in known, f"{where}: unknown trainer.prepare flag {arg!r}"
        assert match.group(1) not in ("num_tasks", "task_index", "run_name"), (
            f"{where}: set by the environment"
        )
    env = {e["name"]: e for e in container["env"]}
    assert env[ENV_RUN_NAME]["valueFrom"]["fieldRef"]["fieldPath"] == JOB_NAME_LABEL, where
    return 1


def prepare_job(objects):
    [job] = [d for d in objects if d["kind"] == "Job"]
    return job, job["spec"]["template"]["spec"]["containers"][0]


def check_prepare_job(job, container):
    """Indexed, N tasks everywhere, independent retries per index, errors.py's exit codes, CPU only."""
    spec = job["spec"]
    env = {e["name"]: e for e in container["env"]}
    assert spec["completionMode"] == "Indexed"
    assert int(env[ENV_NUM_TASKS]["value"]) == spec["completions"] == spec["parallelism"]
    shards = next(int(a.split("=")[1]) for a in container["args"] if a.startswith("--num_shards="))
    assert shards >= spec["completions"], "every task needs a shard of its own"
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec and "successPolicy" not in spec
    rules = spec["podFailurePolicy"]["rules"]
    on_exit = {"containerName": "prepare", "operator": "In"}
    assert {"action": "FailJob", "onExitCodes": {**on_exit, "values": [2, 3]}} in rules
    assert {"action": "Ignore", "onExitCodes": {**on_exit, "values": [143, 144, 145]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert spec["activeDeadlineSeconds"] > 0 and spec["podReplacementPolicy"] == "Failed"
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Never"
    assert "cloud.google.com/gke-accelerator" not in pod_spec.get("nodeSelector", {})
    assert not any("nvidia.com/gpu" in container["resources"][k] for k in ("requests", "limits"))
    flags = [a.split("=")[0] for a in container["args"]]
    cpu = container["resources"]["limits"]["cpu"]
    assert container["args"][flags.index("--workers")] == f"--workers={int(cpu)}", (
        "decode processes = CPU limit"
    )


def test_prepare_overlay_is_an_indexed_job_of_independent_tasks():
    objects = load("overlay:prepare")
    job, container = prepare_job(objects)
    check_prepare_job(job, container)
    check_prepare_container(container, "overlay:prepare")
    assert job["metadata"]["name"] == "colorizer-prepare"
    assert not any(d["kind"] == "Job" and d["metadata"]["name"] == "colorizer-train" for d in objects)
    [config] = [
        d for d in objects if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "colorizer-config"
    ]
    assert (
        "--input_dir=$(PHOTOS_DIR)" in container["args"] and "--output_dir=$(DATA_DIR)" in container["args"]
    )
    assert config["data"]["PHOTOS_DIR"].startswith("gs://") and config["data"]["DATA_DIR"].startswith("gs://")
    assert config["data"]["TRAIN_DATA"].startswith(config["data"]["DATA_DIR"] + "/train-"), (
        "trains on what it writes"
    )
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "colorizer-prepare"


def dry_run(capsys, *argv):
    assert launch.main(["prepare", f"--image={PINNED}", "--dry_run", *argv]) == 0, capsys.readouterr().err
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_launch_prepare_dry_run_builds_a_valid_job(capsys):
    [job] = dry_run(
        capsys,
        "--name=prep-b",
        "--tasks=8",
        "--input_dir=gs://b/photos/",
        "--output_dir=gs://b/data",
        "--num_shards=512",
        "--cpu=4",
        "--memory=8Gi",
        "--spot",
        "--arg=--recursive",
        "--max_hours=2",
    )
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    check_prepare_job(job, container)
    check_prepare_container(container, "launch prepare")
    assert job["metadata"]["name"] == "prep-b" and job["metadata"]["labels"]["colorizer.dev/run"] == "prep-b"
    assert job["spec"]["completions"] == 8 and job["spec"]["activeDeadlineSeconds"] == 7200
    assert container["image"] == PINNED
    assert container["args"][-5:] == [
        "--input_dir=gs://b/photos/",
        "--output_dir=gs://b/data",
        "--num_shards=512",
        "--workers=4",
        "--recursive",
    ]
    assert "--num_shards=256" not in container["args"] and "--workers=2" not in container["args"]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "24Gi"}
    assert job["spec"]["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-spot"] == "true"


@pytest.mark.parametrize(
    "argv",
    [
        ["--tasks=0"],
        ["--tasks=300"],
        ["--tasks=4", "--num_shards=2"],
        ["--name=Bad_Name"],
        ["--arg=--num_tasks=3"],
        ["--arg=--shards=3"],
        ["--max_hours=0"],
    ],
)
def test_launch_prepare_bad_input_is_one_line_and_exit_2(argv, capsys):
    assert launch.main(["prepare", f"--image={PINNED}", "--dry_run", *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


def test_launch_prepare_creates_the_job_streams_task_0_and_succeeds(cluster, capsys):
    cluster.pods = [pod("p-0-x", "Running"), pod("p-1-y", "Running", index="1")]
    cluster.logs = {"p-0-x": "task 0/2: 120/400 photos (1 skipped), 38.0 photos/s, ETA 7m22s\n"}
    cluster.statuses = [{}, {}, {"conditions": [{"type": "Complete", "status": "True"}]}]
    argv = [
        "--poll_seconds=0.01",
        "--schedule_timeout=5",
        "prepare",
        f"--image={PINNED}",
        "--name=p",
        "--tasks=2",
    ]
    assert launch.main(argv, api=cluster.api()) == 0
    out = capsys.readouterr()
    assert "ETA 7m22s" in out.out and "succeeded" in out.err and "2 prepare tasks" in out.err
    [post] = [r for r in cluster.requests if r[0] == "POST"]
    assert post[1] == "/apis/batch/v1/namespaces/colorizer/jobs" and post[3]["spec"]["completions"] == 2


def doc_prepare_commands():
    for path in (DOCS, ROOT / "README.md"):
        for _, block in doc_blocks(path):
            for command in block.replace("\\\n", " ").splitlines():
                command = command.split("#")[0].strip()
                if command.startswith("python -m trainer.launch prepare"):
                    yield command


@pytest.mark.parametrize("command", sorted(set(doc_prepare_commands())))
def test_doc_prepare_commands_dry_run(command, capsys):
    """Every `trainer.launch prepare` in the docs parses and builds a valid Job (with --dry_run)."""
    argv = (
        command.replace("$IMAGE_DIGEST", PINNED).replace("$IMAGE", PINNED).replace("$BUCKET", "b").split()[3:]
    )
    assert launch.main(argv + ["--dry_run"]) == 0, capsys.readouterr().err
    for obj in yaml.safe_load_all(capsys.readouterr().out):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
