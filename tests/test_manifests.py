"""Offline checks of everything a cluster would run: k8s/ manifests and overlays, skaffold.yaml, docker/.

No cluster or Docker engine is needed: Kubernetes' own schemas come from `kubernetes-validate`,
the TFJob CRD and skaffold schemas from tests/schemas/ (copies, see its README), kustomize from
`kubectl kustomize`, Dockerfile linting from hadolint, and, when $CHECKOV names a checkov binary
(in its own virtualenv: scripts/lint_k8s.sh), checkov.
"""

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.33"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
RAW_FILES = [
    "job.yaml",
    "components/serving/serving.yaml",
    "components/multinode/multinode.yaml",
    "components/tfjob/tfjob.yaml",
    "components/prepare/prepare.yaml",
    "components/colorize/colorize.yaml",
]
TRAINING_OVERLAYS = ("dev", "gke", "gke-multinode", "tfjob")
SERVING_OVERLAYS = ("serve", "dev-serve", "serve-gated")
PREPARE_OVERLAYS = ("prepare",)  # tests/test_prepare_job.py
COLORIZE_OVERLAYS = ("colorize",)  # tests/test_colorize_job.py
TRAINER_IMAGE = "colorizer-trainer"
TRAINER_CONTAINERS = ("trainer", "tensorflow")
FLAG = re.compile(r"^--(?:no)?([a-z_][a-z0-9_]*)(?:=.*)?$")
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def tool(name):
    """A binary from the test extras (installed next to this Python); missing is an error, not a skip."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} not found: pip install -e '.[test]'")
    return found


def kustomize(path):
    """Renders a kustomization the way `kubectl apply -k` would (fresh objects each call)."""
    return [d for d in yaml.safe_load_all(_rendered(str(path))) if d]


@functools.lru_cache(maxsize=None)
def _rendered(path: str) -> str:
    """`kubectl kustomize` output, once per path and session: many tests read the same overlays."""
    out = subprocess.run([tool("kubectl"), "kustomize", path], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def load(name):
    """Documents of a raw YAML file, or of a rendered overlay when name is `overlay:NAME`."""
    if name.startswith("overlay:"):
        return kustomize(K8S / "overlays" / name.split(":", 1)[1])
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


SOURCES = RAW_FILES + [f"overlay:{o}" for o in OVERLAYS]


def pod_templates(doc):
    """(container-owner name, pod template) pairs of a workload object: Job, Deployment, TFJob
    replicas, JobSet replicated Jobs."""
    name = doc["metadata"]["name"]
    if doc["kind"] in ("Job", "Deployment"):
        return [(name, doc["spec"]["template"])]
    if doc["kind"] == "TFJob":
        return [(f"{name}/{r}", s["template"]) for r, s in doc["spec"]["tfReplicaSpecs"].items()]
    if doc["kind"] == "JobSet":
        return [
            (f"{name}/{j['name']}", j["template"]["spec"]["template"]) for j in doc["spec"]["replicatedJobs"]
        ]
    return []


def pod_specs(doc):
    """(container-owner name, pod spec) pairs of a workload object (see pod_templates)."""
    return [(owner, template["spec"]) for owner, template in pod_templates(doc)]


def walk(node, key):
    """Every value stored under `key` anywhere inside node."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def tfjob_schema():
    return json.loads((SCHEMAS / "tfjob-v1.9.0.schema.json").read_text())["schema"]


@pytest.fixture(scope="module", params=SOURCES)
def docs(request):
    return request.param, load(request.param)


def test_there_is_something_to_check():
    assert set(TRAINING_OVERLAYS + SERVING_OVERLAYS + PREPARE_OVERLAYS + COLORIZE_OVERLAYS) == set(OVERLAYS)


def test_standalone_job_is_the_base_job():
    """kustomize can't load ../job.yaml, so k8s/job.yaml is a copy of the base's; they must not drift."""
    assert (K8S / "job.yaml").read_bytes() == (K8S / "base" / "job.yaml").read_bytes(), (
        "cp k8s/base/job.yaml k8s/job.yaml"
    )


def test_yaml_lint():
    """yamllint catches what PyYAML forgives (duplicate keys, bad indentation)."""
    config = (
        "{extends: default, rules: "
        "{line-length: {max: 160}, document-start: disable, truthy: {check-keys: false}}}"
    )
    out = subprocess.run(
        [tool("yamllint"), "-s", "-d", config, str(K8S), str(ROOT / "skaffold.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_strict_schemas(docs):
    """Every object validates strictly (unknown fields are errors) against Kubernetes or the TFJob CRD."""
    name, objects = docs
    for doc in objects:
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == "kubeflow.org/v1":
            jsonschema.validate(doc, tfjob_schema())
            for _, spec in pod_specs(doc):  # the CRD is lax about pod templates; Kubernetes' schema isn't
                template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "t"},
                    "template": {"metadata": {}, "spec": spec},
                }
                kubernetes_validate.validate(template, K8S_VERSION, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_quantities_parse(docs):
    name, objects = docs
    for doc in objects:
        for resources in walk(doc, "resources"):
            if isinstance(resources, dict):
                for value in list(resources.get("requests", {}).values()) + list(
                    resources.get("limits", {}).values()
                ):
                    parse_quantity(value)
        for size in walk(doc, "sizeLimit"):
            parse_quantity(size)


def test_trainer_flags_exist(docs):
    """Every --flag a manifest passes to the trainer is one trainer.task defines, so they can't drift;
    every trainer logs JSON lines, so Cloud Logging shows severities and the epoch's numbers."""
    from absl import flags

    from trainer.train import config

    name, objects = docs
    known, checked = flags.FlagValues(), 0
    config.define_flags(known)  # every flag of python -m trainer.task, on a FlagValues of its own
    for doc in objects:
        for owner, spec in pod_specs(doc):
            for c in spec["containers"]:
                if c["name"] == "prepare":  # trainer.prepare's flags: tests/test_prepare_job.py
                    from tests.test_prepare_job import check_prepare_container

                    checked += check_prepare_container(c, f"{name} {owner}")
                if c["name"] == "colorize":  # trainer.client's flags: tests/test_colorize_job.py
                    from tests.test_colorize_job import check_colorize_container

                    checked += check_colorize_container(c, f"{name} {owner}")
                if c["name"] not in TRAINER_CONTAINERS:
                    continue
                checked += 1
                assert "command" not in c, f"{owner}: keep the image's ENTRYPOINT (python -m trainer.task)"
                assert "--log_format=json" in c.get("args", []), f"{name} {owner}: logs for Cloud Logging"
                for arg in c.get("args", []):
                    match = FLAG.match(arg)
                    assert match and match.group(1) in known, f"{name} {owner}: unknown trainer flag {arg!r}"
    assert checked or not any(d["kind"] in ("Job", "TFJob") for d in objects), (
        f"{name}: no trainer container found"
    )


def test_variable_references_resolve(docs):
    """$(VAR) in args expands only from the container's env and envFrom; a typo would pass through
    verbatim."""
    name, objects = docs
    config = {d["metadata"]["name"]: set(d.get("data", {})) for d in objects if d["kind"] == "ConfigMap"}
    for doc in objects:
        for owner, spec in pod_specs(doc):
            for c in spec["containers"]:
                defined = {e["name"] for e in c.get("env", [])}
                for source in c.get("envFrom", []):
                    ref = source["configMapRef"]["name"]
                    defined |= config[ref] if ref in config else _standalone_config_keys()
                for arg in c.get("args", []) + c.get("command", []):
                    for var in VAR_REF.findall(arg):
                        assert var in defined, f"{name} {owner}: $({var}) is not defined"


def _standalone_config_keys():
    """Raw component files rely on job.yaml's ConfigMap."""
    return {k for d in load("job.yaml") if d["kind"] == "ConfigMap" for k in d["data"]}


def test_pods_are_hardened(docs):
    name, objects = docs
    for doc in objects:
        for owner, spec in pod_specs(doc):
            where = f"{name} {owner}"
            assert spec.get("automountServiceAccountToken") is False, where
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            mounts = {v["name"]: v for v in spec["volumes"]}
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"
                paths = {m["mountPath"]: mounts[m["name"]] for m in c["volumeMounts"]}
                assert "emptyDir" in paths["/tmp"], f"{where}: /tmp must be a writable emptyDir"
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert env.get("HOME") == "/tmp" and env.get("TMPDIR") == "/tmp", where
                if c["name"] in TRAINER_CONTAINERS:
                    assert paths["/dev/shm"]["emptyDir"]["medium"] == "Memory", where


def settings_env():
    """k8s/settings/settings.env as shipped: {key: value}."""
    lines = (K8S / "settings" / "settings.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


# The Google account (settings.env key) each kind of pod acts as; every pod of the dev overlays acts
# as DEV_GSA (docs/KUBERNETES.md, IAM).
IDENTITY_GSA = {
    "prepare": "PREPARE_GSA",
    "trainer": "TRAINER_GSA",
    "serving": "SERVING_GSA",
    "colorize": "COLORIZE_GSA",
}
DEV_NAMESPACE = "colorizer-dev"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_kind_of_pod_acts_as_its_own_google_account(overlay):
    objects, settings = load(f"overlay:{overlay}"), settings_env()
    annotation = "iam.gke.io/gcp-service-account"
    accounts = {
        sa["metadata"]["name"]: sa["metadata"]["annotations"][annotation]
        for sa in _by_kind(objects, "ServiceAccount")
    }
    checked = 0
    for doc in objects:
        for owner, template in pod_templates(doc):
            component = template["metadata"]["labels"]["app.kubernetes.io/component"]
            key = "DEV_GSA" if doc["metadata"]["namespace"] == DEV_NAMESPACE else IDENTITY_GSA[component]
            assert accounts[template["spec"]["serviceAccountName"]] == settings[key], f"{overlay} {owner}"
            checked += 1
    assert checked


def test_identities_are_distinct_google_accounts():
    accounts = [v for k, v in settings_env().items() if k.endswith("_GSA")]
    assert len(accounts) == len(set(accounts)) == 5, accounts


def test_service_accounts_use_workload_identity(docs):
    name, objects = docs
    accounts = [d for d in objects if d["kind"] == "ServiceAccount"]
    for sa in accounts:
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com"
        )
        assert sa["automountServiceAccountToken"] is False
    names = {sa["metadata"]["name"] for sa in accounts}
    for doc in objects:
        for owner, spec in pod_specs(doc):
            assert not accounts or spec["serviceAccountName"] in names, f"{name} {owner}"


def _by_kind(objects, kind):
    return [d for d in objects if d["kind"] == kind]


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_indexed_job(objects):
    """The contract with trainer/train/distribute.py: peers are {job}-{i}.{service}:{port}, all resolvable."""
    jobs = [j for j in _by_kind(objects, "Job") if j["spec"].get("completionMode") == "Indexed"]
    assert len(jobs) == 1
    job = jobs[0]["spec"]
    spec, [c] = job["template"]["spec"], job["template"]["spec"]["containers"]
    services = {s["metadata"]["name"]: s for s in _by_kind(objects, "Service")}
    service = services[spec["subdomain"]]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    labels = job["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), (
        "the headless Service must select the workers"
    )
    env = _env(c)
    assert env["COLORIZER_SERVICE"]["value"] == spec["subdomain"]
    assert (
        env["COLORIZER_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['batch.kubernetes.io/job-name']"
    )
    assert int(env["COLORIZER_NUM_WORKERS"]["value"]) == job["completions"] == job["parallelism"]
    assert {"containerPort": int(env["COLORIZER_PORT"]["value"]), "name": "grpc", "protocol": "TCP"} in c[
        "ports"
    ]
    assert job["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    check_failure_policy(jobs[0])
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["labelSelector"]["matchLabels"].items() <= labels.items()
    assert anti[0]["matchLabelKeys"] == ["batch.kubernetes.io/job-name"], (
        "two workers of one run never share a node"
    )
    assert spec["restartPolicy"] == "Never"


def check_failure_policy(job):
    """trainer/errors.py's contract: its permanent codes fail the Job, 143-145 and disruptions are ignored
    (by exit code too: a stop vote makes every worker exit 143, only one carries DisruptionTarget), and a
    deadline."""
    from trainer.errors import PERMANENT_EXIT_CODES, RETRIABLE_EXIT_CODES

    rules = job["spec"]["podFailurePolicy"]["rules"]
    exit_rule = {"containerName": "trainer", "operator": "In"}
    assert {"action": "FailJob", "onExitCodes": {**exit_rule, "values": list(PERMANENT_EXIT_CODES)}} in rules
    assert {"action": "Ignore", "onExitCodes": {**exit_rule, "values": list(RETRIABLE_EXIT_CODES)}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert job["spec"]["activeDeadlineSeconds"] > 0 and job["spec"]["podReplacementPolicy"] == "Failed"


def test_multinode_overlay_wiring():
    check_indexed_job(load("overlay:gke-multinode"))


def test_multinode_survives_name_prefix(tmp_path):
    """namePrefix renames the headless Service; the Job's subdomain and COLORIZER_SERVICE must follow."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / "gke-multinode", tmp_path)],
                "namePrefix": "exp7-",
                "nameSuffix": "-b",
                "namespace": "research",
            }
        )
    )
    objects = kustomize(tmp_path)
    check_indexed_job(objects)
    assert _by_kind(objects, "Job")[0]["spec"]["template"]["spec"]["subdomain"] == "exp7-colorizer-workers-b"


def test_tfjob_follows_the_operator_contract():
    [tfjob] = _by_kind(load("overlay:tfjob"), "TFJob")
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["restartPolicy"] == "ExitCode"
    [c] = worker["template"]["spec"]["containers"]
    assert c["name"] == "tensorflow"
    assert {"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"} in c["ports"]
    assert tfjob["spec"]["runPolicy"]["activeDeadlineSeconds"] > 0, (
        "ExitCode ignores backoffLimit (kubeflow/trainer#2045)"
    )
    anti = worker["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert anti[0]["matchLabelKeys"] == ["training.kubeflow.org/job-name"]
    assert "--model_dir=$(MODEL_DIR)/$(RUN_NAME)" in c["args"]
    assert (
        _env(c)["RUN_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['training.kubeflow.org/job-name']"
    )


def test_single_node_job():
    objects = load("job.yaml")
    [job] = _by_kind(objects, "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["cloud.google.com/gke-accelerator"]
    [c] = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
    check_failure_policy(job)
    assert {d["kind"] for d in objects} >= {"Namespace", "ServiceAccount", "ConfigMap", "Job"}


@pytest.mark.parametrize("overlay", ["dev", "gke", "gke-multinode"])
def test_each_run_checkpoints_under_its_job_name(overlay):
    """Re-running a finished Job must not silently resume it under another run's name: model_dir is per
    Job."""
    for job in _by_kind(load(f"overlay:{overlay}"), "Job"):
        [c] = job["spec"]["template"]["spec"]["containers"]
        [model_dir] = [a for a in c["args"] if a.startswith("--model_dir=")]
        var = model_dir.rsplit("/", 1)[1][2:-1]
        assert model_dir == f"--model_dir=$(MODEL_DIR)/$({var})"
        assert (
            _env(c)[var]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.labels['batch.kubernetes.io/job-name']"
        )


def test_job_names_differ_between_overlays():
    """`kubectl apply -k` of one overlay after another (or after k8s/job.yaml) never hits an existing Job."""
    names = [
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for source in ["job.yaml"] + [f"overlay:{o}" for o in TRAINING_OVERLAYS]
        for d in load(source)
        if d["kind"] in ("Job", "TFJob")
    ]
    assert len(names) == len(set(names)), names


def test_training_overlays_deploy_no_serving():
    for overlay in TRAINING_OVERLAYS:
        assert not _by_kind(load(f"overlay:{overlay}"), "Deployment"), overlay


def test_trainer_network_policy_admits_nccl_between_trainers_only():
    [policy] = [
        p for p in _by_kind(load("job.yaml"), "NetworkPolicy") if p["metadata"]["name"] == "colorizer-trainer"
    ]
    [rule] = policy["spec"]["ingress"]
    trainers = {"app.kubernetes.io/component": "trainer"}
    assert rule["from"] == [{"podSelector": {"matchLabels": trainers}}]
    assert policy["spec"]["podSelector"]["matchLabels"] == trainers
    assert rule["ports"] == [{"protocol": "TCP", "port": 1024, "endPort": 65535}], (
        "2222 and NCCL's ephemeral ports"
    )


def test_dev_overlay_runs_on_cpu():
    for job in _by_kind(load("overlay:dev"), "Job"):
        spec = job["spec"]["template"]["spec"]
        assert "nodeSelector" not in spec
        assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]


def serving_objects():
    objects = load("overlay:serve")
    assert not _by_kind(objects, "Job"), "the serve overlay must not start training"
    return objects


def test_serving_contract():
    objects = serving_objects()
    [deploy] = _by_kind(objects, "Deployment")
    spec = deploy["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert re.fullmatch(r"tensorflow/serving:2\.\d+\.\d+", c["image"]), "pin a 2.x release tag"
    env = _env(c)
    assert env["MODEL_NAME"]["value"] == "colorizer" and env["GRPC_PORT"]["value"] == "8500"
    assert env["REST_PORT"]["value"] == "8501"
    assert env["EXPORT_DIR"]["valueFrom"]["configMapKeyRef"]["key"] == "EXPORT_DIR"
    assert {p["containerPort"] for p in c["ports"]} == {8501}, "gRPC stays inside the pod"
    assert "--port=$(GRPC_PORT)" in c["args"], "TF Serving still needs its gRPC port"
    args = dict(a.split("=", 1) for a in c["args"])
    assert args["--enable_batching"] == "true" and args["--model_base_path"] == "$(EXPORT_DIR)"
    [config] = [
        d for d in objects if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("serving-config")
    ]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/colorizer-serving")
    assert (
        next(v for v in spec["volumes"] if v["name"] == mount["name"])["configMap"]["name"]
        == config["metadata"]["name"]
    )
    for flag in ("--batching_parameters_file", "--monitoring_config_file"):
        assert os.path.basename(args[flag]) in config["data"], flag
    assert "prometheus_config" in config["data"]["monitoring.config"]
    assert (
        "exec" in c["readinessProbe"]
        and c["livenessProbe"]
        and c["startupProbe"]["tcpSocket"]["port"] == "http"
    )
    for flag in ("--tensorflow_intra_op_parallelism", "--tensorflow_inter_op_parallelism"):
        assert args[flag] == "$(CPU_LIMIT)", flag
    assert env["CPU_LIMIT"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": "serving",
        "resource": "limits.cpu",
        "divisor": "1",
    }
    assert "replicas" not in deploy["spec"], (
        "the HPA owns the scale; replicas here would reset it on every apply"
    )


def test_serving_companions_select_the_pods():
    objects = serving_objects()
    [deploy] = _by_kind(objects, "Deployment")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    [hpa] = _by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    [pdb] = _by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", (
        "pods waiting for a model must not block drains"
    )
    service = next(
        s for s in _by_kind(objects, "Service") if s["metadata"]["name"] == deploy["metadata"]["name"]
    )
    assert service["spec"]["selector"].items() <= labels.items()
    policies = [
        p
        for p in _by_kind(objects, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert policies and {p["port"] for r in policies[0]["spec"]["ingress"] for p in r["ports"]} == {8501}


def serving_ports(objects):
    """(container ports, Service ports, NetworkPolicy ports) of a rendered serving overlay."""
    [deploy] = _by_kind(objects, "Deployment")
    [c] = deploy["spec"]["template"]["spec"]["containers"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    [service] = [s for s in _by_kind(objects, "Service") if s["spec"]["selector"].items() <= labels.items()]
    [policy] = [
        p
        for p in _by_kind(objects, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    return {p["containerPort"] for p in c["ports"]}, {p["port"] for p in service["spec"]["ports"]}, admitted


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_only_rest_leaves_the_serving_pod(overlay):
    """The client speaks REST only: gRPC 8500 is neither published nor admitted."""
    assert serving_ports(load(f"overlay:{overlay}")) == ({8501}, {8501}, {8501})


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_the_api_servers_pod_proxy_reaches_serving_under_an_enforced_policy(overlay):
    """With Dataplane V2 the policy is enforced; GKE's API server reaches pods (promote --wait's pod
    proxy) through the konnectivity agents of kube-system, so those must be admitted on REST."""
    objects = load(f"overlay:{overlay}")
    [deploy] = _by_kind(objects, "Deployment")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    policies = _by_kind(objects, "NetworkPolicy")
    [policy] = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
    agents = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "konnectivity-agent"}},
    }
    rest = {"protocol": "TCP", "port": 8501}
    assert any(agents in rule["from"] and rest in rule["ports"] for rule in policy["spec"]["ingress"])


def test_an_overlay_opts_into_grpc_with_the_serving_grpc_component(tmp_path):
    """k8s/components/serving-grpc names the port, publishes it and admits it, nothing else."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / "serve", tmp_path)],
                "components": [os.path.relpath(K8S / "components" / "serving-grpc", tmp_path)],
            }
        )
    )
    objects = kustomize(tmp_path)
    assert serving_ports(objects) == ({8500, 8501}, {8500, 8501}, {8500, 8501})
    [service] = [s for s in _by_kind(objects, "Service") if s["metadata"]["name"] == "colorizer-serving"]
    [c] = _by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    grpc = next(p for p in service["spec"]["ports"] if p["port"] == 8500)
    assert {"name": grpc["targetPort"], "containerPort": 8500, "protocol": "TCP"} in c["ports"]
    assert _env(c)["GRPC_PORT"]["value"] == "8500"


@pytest.mark.parametrize("state, ok", [("AVAILABLE", True), ("LOADING", False), (None, False)])
def test_readiness_probe_means_model_available(state, ok, tmp_path):
    """Runs the probe script with bash against a local server answering like TF Serving's status API."""
    import http.server
    import threading

    body = json.dumps(
        {
            "model_version_status": [
                {"version": "3", "state": state or "END", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
        indent=1,
    )

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's naming)
            found = self.path == "/v1/models/colorizer"
            self.send_response(200 if found and state else 404)
            self.end_headers()
            self.wfile.write(body.encode() if found and state else b'{"error": "not found"}')

        def log_message(self, *args):
            pass

    [config] = [d for d in serving_objects() if d["metadata"]["name"] == "colorizer-serving-config"]
    script = tmp_path / "probe.sh"
    script.write_text(config["data"]["model-available.sh"])
    server = http.server.HTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"PATH": os.environ["PATH"], "MODEL_NAME": "colorizer", "REST_PORT": str(server.server_port)}
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True, timeout=10, check=False)
    finally:
        server.shutdown()
    assert (result.returncode == 0) == ok, result.stderr


def test_skaffold_config():
    """skaffold.yaml validates against the v4beta14 schema, names only paths that exist, and its artifact
    is the image the manifests use (so skaffold substitutes the tag it built)."""
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    schema = json.loads((SCHEMAS / "skaffold-v4beta14.schema.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=str)
    assert not errors, errors[0].message
    assert config["apiVersion"] == "skaffold/v4beta14"
    [artifact] = config["build"]["artifacts"]
    context = ROOT / artifact["context"]
    assert (context / artifact["docker"]["dockerfile"]).is_file()
    assert artifact["image"] == TRAINER_IMAGE
    paths = list(walk(config["manifests"], "paths")) + [
        p for prof in config["profiles"] for p in walk(prof, "paths")
    ]
    assert {prof["name"] for prof in config["profiles"]} >= {"train", "multi-node", "serve"}
    for path in (p for group in paths for p in group):
        assert (ROOT / path / "kustomization.yaml").is_file(), path
    assert config["manifests"]["kustomize"]["paths"] == ["k8s/overlays/dev"]
    for prof in config["profiles"]:
        [path] = prof["manifests"]["kustomize"]["paths"]
        assert (prof["name"] in ("serve", "dev-serve")) == (path.split("/")[-1] in SERVING_OVERLAYS), prof[
            "name"
        ]


def test_skaffold_schema_rejects_typos():
    schema = json.loads((SCHEMAS / "skaffold-v4beta14.schema.json").read_text())
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    config["profiles"][0]["manifests"] = {"kustomise": {"paths": ["k8s/overlays/gke"]}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(config))


def test_dockerfiles_lint_clean():
    dockerfiles = sorted((ROOT / "docker").glob("*Dockerfile"))
    assert len(dockerfiles) == 2
    out = subprocess.run(
        [tool("hadolint"), *map(str, dockerfiles)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_trainer_image_contract():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM tensorflow/tensorflow:2\.21\.0-gpu$", text, re.M)
    assert re.search(r"^RUN pip install --no-cache-dir \. ", text, re.M), "one dependency list: setup.py's"
    assert re.search(r"^USER 10001:10001$", text, re.M), "numeric non-root user, as runAsNonRoot needs"
    assert 'ENTRYPOINT ["python", "-m", "trainer.task"]' in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:3] == ["!setup.py", "!README.md", "!trainer/"]


def test_checkov_finds_nothing_unexplained(tmp_path):
    """checkov over every manifest, rendered overlay and Dockerfile: zero failures (skips carry reasons).

    checkov can't share this virtualenv (it pins python-dateutil<3); $CHECKOV names its binary.
    """
    checkov = os.environ.get("CHECKOV")
    if not checkov:
        pytest.skip("set CHECKOV=/path/to/checkov (its own virtualenv; scripts/lint_k8s.sh makes one)")
    assert Path(checkov).is_file(), f"CHECKOV={checkov} does not exist"
    for source in SOURCES:
        (tmp_path / (source.replace("/", "_").replace(":", "_") + ".yaml")).write_text(
            yaml.safe_dump_all(load(source))
        )
    runs = [("kubernetes", ["-d", str(tmp_path)]), ("dockerfile", ["-d", str(ROOT / "docker")])]
    for framework, target in runs:
        out = subprocess.run(
            [
                checkov,
                *target,
                "--framework",
                framework,
                "--skip-download",
                "--compact",
                "--quiet",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        report = json.loads(out.stdout)
        for result in report if isinstance(report, list) else [report]:
            failed = result["results"]["failed_checks"]
            assert not failed, [(f["check_id"], f["resource"]) for f in failed]
            assert result["summary"]["passed"] > 0, f"checkov scanned no {framework} file"


# The `restricted` Pod Security Standard as Kubernetes' pod-security-admission checks it at the version
# the namespaces pin (https://kubernetes.io/docs/concepts/security/pod-security-standards/; the checks
# are staging/src/k8s.io/pod-security-admission/policy/check_*.go). Each check returns the reasons a
# pod template fails it; restricted includes every baseline check.
PSS_VERSION = f"v{K8S_VERSION}"
PSS_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": PSS_VERSION,
    "pod-security.kubernetes.io/audit": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}  # check_restrictedVolumes.go
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
}  # check_sysctls.go
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}  # check_seLinuxOptions.go
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}  # check_seccompProfile_restricted.go
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _all_containers(spec):
    """containers, initContainers and ephemeralContainers (visitContainers in the checks)."""
    return [c for key in ("containers", "initContainers", "ephemeralContainers") for c in spec.get(key, [])]


def _context(obj):
    return obj.get("securityContext") or {}


def _pss_host(template):
    """Host namespaces, ports and privilege: check_hostNamespaces, check_hostPorts, check_privileged,
    check_windowsHostProcess."""
    spec, found = template["spec"], []
    found += [f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    for c in _all_containers(spec):
        found += [f"{c['name']}: hostPort" for p in c.get("ports", []) if p.get("hostPort")]
        found += [f"{c['name']}: privileged"] if _context(c).get("privileged") else []
    for owner in [spec, *_all_containers(spec)]:
        found += ["hostProcess"] if (_context(owner).get("windowsOptions") or {}).get("hostProcess") else []
    return found


def _pss_volumes(template):
    """Only core volume types (check_restrictedVolumes): no hostPath, no inline network disks."""
    return [
        f"volume {v['name']}: {kind}"
        for v in template["spec"].get("volumes", [])
        for kind in set(v) - {"name"}
        if kind not in RESTRICTED_VOLUMES
    ]


def _pss_capabilities(template):
    """Drop ALL, add at most NET_BIND_SERVICE (check_capabilities_restricted)."""
    found = []
    for c in _all_containers(template["spec"]):
        caps = _context(c).get("capabilities") or {}
        found += [f"{c['name']}: capabilities.drop lacks ALL"] if "ALL" not in caps.get("drop", []) else []
        found += [f"{c['name']}: adds {a}" for a in caps.get("add", []) if a != "NET_BIND_SERVICE"]
    return found


def _pss_escalation_and_user(template):
    """allowPrivilegeEscalation false everywhere, runAsNonRoot true (pod, or every container) and never
    false, runAsUser never 0 (check_allowPrivilegeEscalation, check_runAsNonRoot, check_runAsUser)."""
    spec, found = template["spec"], []
    pod_non_root = _context(spec).get("runAsNonRoot")
    found += ["pod: runAsNonRoot false"] if pod_non_root is False else []
    found += ["pod: runAsUser 0"] if _context(spec).get("runAsUser") == 0 else []
    for c in _all_containers(spec):
        sc = _context(c)
        found += (
            [f"{c['name']}: allowPrivilegeEscalation not false"]
            if sc.get("allowPrivilegeEscalation") is not False
            else []
        )
        non_root = sc.get("runAsNonRoot", pod_non_root)
        found += [f"{c['name']}: runAsNonRoot not true"] if non_root is not True else []
        found += [f"{c['name']}: runAsUser 0"] if sc.get("runAsUser") == 0 else []
    return found


def _pss_seccomp(template):
    """RuntimeDefault or Localhost on the pod or on every container, never anything else
    (check_seccompProfile_restricted)."""
    spec, found = template["spec"], []
    pod = (_context(spec).get("seccompProfile") or {}).get("type")
    found += [f"pod: seccompProfile {pod}"] if pod is not None and pod not in SECCOMP_TYPES else []
    for c in _all_containers(spec):
        own = (_context(c).get("seccompProfile") or {}).get("type")
        effective = own if own is not None else pod
        found += [f"{c['name']}: seccompProfile {effective}"] if effective not in SECCOMP_TYPES else []
    return found


def _pss_linux_options(template):
    """SELinux type/user/role, AppArmor, procMount and sysctls (check_seLinuxOptions,
    check_appArmorProfile, check_procMount, check_sysctls)."""
    spec, found = template["spec"], []
    for owner in [spec, *_all_containers(spec)]:
        sc, who = _context(owner), owner.get("name", "pod")
        selinux = sc.get("seLinuxOptions") or {}
        found += [f"{who}: seLinuxOptions"] if selinux.get("type", "") not in SELINUX_TYPES else []
        found += [f"{who}: seLinuxOptions user/role"] if selinux.get("user") or selinux.get("role") else []
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        found += (
            [f"{who}: appArmorProfile {apparmor}"]
            if apparmor not in (None, "RuntimeDefault", "Localhost")
            else []
        )
        found += (
            [f"{who}: procMount {sc['procMount']}"] if sc.get("procMount", "Default") != "Default" else []
        )
    found += [
        f"sysctl {s['name']}" for s in _context(spec).get("sysctls", []) if s["name"] not in SAFE_SYSCTLS
    ]
    for key, value in (template.get("metadata") or {}).get("annotations", {}).items():
        allowed = value in ("", "runtime/default") or value.startswith("localhost/")
        found += [f"annotation {key}={value}"] if key.startswith(APPARMOR_ANNOTATION) and not allowed else []
    return found


PSS_CHECKS = (
    _pss_host,
    _pss_volumes,
    _pss_capabilities,
    _pss_escalation_and_user,
    _pss_seccomp,
    _pss_linux_options,
)


def restricted_violations(template) -> list:
    """Why a pod template fails the restricted Pod Security Standard (empty: it passes)."""
    return [reason for check in PSS_CHECKS for reason in check(template)]


def test_every_pod_template_passes_the_restricted_pod_security_standard(docs):
    name, objects = docs
    for doc in objects:
        for owner, template in pod_templates(doc):
            assert not restricted_violations(template), f"{name} {owner}: {restricted_violations(template)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespaces_enforce_the_restricted_pod_security_standard(overlay):
    """Every namespace an overlay puts pods in is one it labels to enforce `restricted` at the pinned
    version (and to audit and warn at the cluster's latest)."""
    objects = load(f"overlay:{overlay}")
    labelled = {
        ns["metadata"]["name"]
        for ns in _by_kind(objects, "Namespace")
        if PSS_LABELS.items() <= ns["metadata"]["labels"].items()
    }
    used = {d["metadata"]["namespace"] for d in objects if pod_templates(d)}
    assert used and used <= labelled, (used, labelled)


def _serving_template():
    [deploy] = _by_kind(serving_objects(), "Deployment")
    return deploy["spec"]["template"]


def _set(*changes):
    """A mutation of a pod template: sets each (path, value), the path a tuple of keys and indices."""

    def apply(template):
        for path, value in changes:
            node = template
            for key in path[:-1]:
                node = node[key] if isinstance(key, int) else node.setdefault(key, {})
            node[path[-1]] = value

    return apply


_POD, _C0 = ("spec", "securityContext"), ("spec", "containers", 0, "securityContext")


@pytest.mark.parametrize(
    "mutation",
    [
        _set((("spec", "hostNetwork"), True)),
        _set(((*_C0, "privileged"), True)),
        _set(((*_C0, "capabilities"), {"drop": ["ALL"], "add": ["SYS_ADMIN"]})),
        _set(((*_C0, "capabilities"), {"drop": ["NET_RAW"]})),
        _set(((*_C0, "allowPrivilegeEscalation"), True)),
        _set(((*_C0, "runAsNonRoot"), False)),
        _set(((*_POD, "runAsNonRoot"), None), ((*_C0, "runAsNonRoot"), None)),
        _set(((*_POD, "runAsUser"), 0)),
        _set(((*_C0, "seccompProfile"), {"type": "Unconfined"})),
        _set(((*_POD, "seccompProfile"), None)),
        _set((("spec", "volumes", 1), {"name": "tmp", "hostPath": {"path": "/tmp"}})),
        _set((("spec", "containers", 0, "ports", 0, "hostPort"), 8501)),
        _set(((*_C0, "procMount"), "Unmasked")),
        _set(((*_POD, "sysctls"), [{"name": "kernel.msgmax", "value": "1"}])),
        _set(((*_POD, "seLinuxOptions"), {"user": "system_u"})),
        _set((("metadata", "annotations", APPARMOR_ANNOTATION + "serving"), "unconfined")),
    ],
)
def test_the_pod_security_model_refuses_a_non_compliant_pod(mutation):
    """The model is not vacuous: one step outside `restricted` on the compliant serving pod fails it."""
    template = copy.deepcopy(_serving_template())
    assert not restricted_violations(template)
    mutation(template)
    assert restricted_violations(template)


def _config_map(objects, name: str) -> dict:
    return next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith(name))[
        "data"
    ]


def _flag(args: list, name: str):
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def _export_limits() -> dict:
    """{EXPORT_DIR: the largest --max_pixels any training overlay exports there with}."""
    from trainer.train.config import DEFAULT_MAX_PIXELS

    limits = {}
    for overlay in TRAINING_OVERLAYS:
        objects = load(f"overlay:{overlay}")
        export_dir = _config_map(objects, "colorizer-config")["EXPORT_DIR"]
        for doc in objects:
            for _, spec in pod_specs(doc):
                for container in (c for c in spec["containers"] if c["name"] in TRAINER_CONTAINERS):
                    max_pixels = int(_flag(container.get("args", []), "max_pixels") or DEFAULT_MAX_PIXELS)
                    limits[export_dir] = max(limits.get(export_dir, 0), max_pixels)
    return limits


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_serving_memory_holds_every_batch_thread_at_the_export_limit(overlay):
    """docs/SERVING.md "Limits": batch threads x (a composition at max_pixels + the batch's other
    images) + idle <= the container's memory limit, for the max_pixels of the exports it serves."""
    from trainer.serve import client, limits

    objects = load(f"overlay:{overlay}")
    batching = dict(
        re.findall(
            r"(\w+) \{ value: (\d+) \}", _config_map(objects, "colorizer-serving-config")["batching.config"]
        )
    )
    threads, max_batch = int(batching["num_batch_threads"]), int(batching["max_batch_size"])
    export_dir = _config_map(objects, "colorizer-config")["EXPORT_DIR"]
    max_pixels = _export_limits()[export_dir]  # a KeyError: no training overlay exports what this serves
    [deployment] = _by_kind(objects, "Deployment")
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "serving"]
    limit = parse_quantity(container["resources"]["limits"]["memory"])
    needed = limits.serving_memory_bytes(max_pixels, threads, max_batch)
    assert needed <= limit, (
        f"{overlay}: {needed / 1e9:.1f} GB needed at {max_pixels} pixels, limit {limit / 1e9:.1f} GB"
    )
    assert parse_quantity(container["resources"]["requests"]["memory"]) == limit, (
        "a pod may use its limit at any time"
    )
    assert max_batch <= limits.MAX_BATCH
    assert client.DEFAULT_BATCH_SIZE <= max_batch, "the client's default --batch_size would be refused"


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_a_serving_rollout_may_wait_as_long_as_its_startup_probe(overlay):
    """The Deployment controller marks a rollout failed after progressDeadlineSeconds (default 600);
    before the first export the startup probe keeps pods unready for up to a day."""
    [deployment] = _by_kind(load(f"overlay:{overlay}"), "Deployment")
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "serving"]
    probe = container["startupProbe"]
    waits = probe.get("initialDelaySeconds", 0) + probe["failureThreshold"] * probe["periodSeconds"]
    assert deployment["spec"].get("progressDeadlineSeconds", 600) >= waits


# The kinds skaffold rewrites `image:` in by default (skaffold.dev/docs/tutorials/skaffold-resource-selector,
# from pkg/skaffold/kubernetes/manifest/visitor.go); anything else needs resourceSelector.allow.
SKAFFOLD_KNOWN_KINDS = {
    "Pod",
    "DaemonSet.apps",
    "Deployment.apps",
    "ReplicaSet.apps",
    "StatefulSet.apps",
    "CronJob.batch",
    "Job.batch",
}


def test_skaffold_rewrites_the_trainer_image_in_every_kind_a_profile_deploys():
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    allowed = {
        f["groupKind"]
        for f in config.get("resourceSelector", {}).get("allow", [])
        if ".*" in f.get("image", [])
    }
    for path in [config["manifests"]["kustomize"]["paths"][0]] + [
        prof["manifests"]["kustomize"]["paths"][0] for prof in config["profiles"]
    ]:
        for doc in kustomize(ROOT / path):
            group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
            kind = f"{doc['kind']}.{group}" if group else doc["kind"]
            if any(str(image).startswith(TRAINER_IMAGE) for image in walk(doc, "image")):
                assert kind in SKAFFOLD_KNOWN_KINDS | allowed, (
                    f"{path}: skaffold leaves {kind}'s image unbuilt"
                )


def _documented_gpus_per_node() -> int:
    """The accelerator count of the walkthrough's GPU node pool."""
    text = (ROOT / "docs" / "KUBERNETES.md").read_text().replace("\\\n", " ")
    [pool] = [line for line in text.splitlines() if line.startswith("gcloud container node-pools create")]
    return int(re.search(r"--accelerator=type=[\w-]+,count=(\d+)", pool).group(1))


@pytest.mark.parametrize("overlay", ["gke", "gke-multinode", "tfjob"])
def test_each_gpu_worker_takes_every_gpu_of_its_node(overlay):
    """One worker per node: a worker asking for fewer GPUs than the documented node has leaves the
    rest paid for and idle."""
    from trainer.cluster.manifests import GPUS_PER_NODE

    assert GPUS_PER_NODE == _documented_gpus_per_node()
    workers = [
        c
        for doc in load(f"overlay:{overlay}")
        for _, spec in pod_specs(doc)
        for c in spec["containers"]
        if c["name"] in TRAINER_CONTAINERS
    ]
    assert workers
    for c in workers:
        for kind in ("requests", "limits"):
            assert c["resources"][kind]["nvidia.com/gpu"] == str(GPUS_PER_NODE), (overlay, kind)
