"""The product under exactly the IAM grants docs/KUBERNETES.md makes, enforced by the GCS test front.

The link to the docs: `documented` runs the docs' IAM block with a `gcloud` that only records its
arguments, and turns each `storage buckets add-iam-policy-binding` into a Binding (the role's
permissions, and the object-name prefix of its IAM Condition). Each identity of settings.env then
does its real work under its own bindings only: prepare reads gs://BUCKET/photos and writes
gs://BUCKET/data, training writes gs://BUCKET/runs and gs://BUCKET/export, serving loads the export,
colorize reads gs://BUCKET/photos with the export and writes gs://BUCKET/colorized, dev trains and
serves under gs://BUCKET/dev. A binding the docs lack is a 403 in that work; a binding
that is unused, or wider than its use (a smaller role would do), or that lets an identity reach a
prefix outside ACCESS, fails the tests below.

Why training needs storage.buckets.get: TensorFlow's `RecursivelyCreateDir` (behind every checkpoint,
summary and export directory) walks up from the target until a level exists, and at gs://BUCKET/ it
asks for the bucket itself, GET /storage/v1/b/BUCKET. In TensorFlow's source (lines as of
google/tsl@5db465fe, the same bodies are in TF 2.21's
third_party/xla/xla/tsl/platform/cloud/gcs_file_system.cc):
  * tsl/platform/file_system.cc:196-225 (google/tsl@7c6e0ab0): RecursivelyCreateDir calls
    FileExists (203) on each parent, IsDirectory (208) on the first that exists, and returns any
    error other than NOT_FOUND (218), so a 403 at the bucket fails the whole makedirs; the same holds
    for the object named like the folder (GET .../o/runs), which is why a prefix grant on `runs` also
    covers the object `runs`;
  * tsl/platform/cloud/gcs_file_system.cc:1460-1466: FileExists of gs://BUCKET/ (empty object)
    calls BucketExists; 2054-2060: IsDirectory does too; 1580: BucketExists -> GetBucketMetadata,
    1640-1644: GET {kGcsUriBase}b/BUCKET; 1654: FolderExists lists objects (storage.objects.list);
    1902-1912: CreateDir of the bucket root calls BucketExists as well.
The walk reaches the bucket only when a top-level prefix is new, i.e. on a project's first run
(gs://BUCKET/runs, gs://BUCKET/export), which is exactly what these tests do.

TF Serving (tensorflow/serving@9d981c5c, file_system_storage_path_source.cc:257 FileExists of
--model_base_path, :277 GetChildren; saved_model_warmup_util.cc:85 FilesExist of the warmup file)
needs only object reads and lists when the base path is below the bucket root:
`_SERVING_STARTUP` replays those calls through TF's filesystem and then loads the SavedModel as
the client does. Not modelled: TF Serving's C++ loader itself (not installed here); it reads the
same files. A --model_base_path of the bucket root (gs://BUCKET) would need storage.buckets.get.
"""

import collections
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import typing
import urllib.parse
from pathlib import Path

import pytest

from tests import forkserver
from tests.conftest import REPO, write_photos
from tests.forkserver import ENV
from tests.gcs_emulator import ROLES, Binding, classify, module_fixture

pytestmark = pytest.mark.system  # real processes, servers or a second TensorFlow (README: test tiers)

BUCKET = "colorizer-iam"
PROJECT = "test-project"
DOCS = Path(REPO) / "docs" / "KUBERNETES.md"
SETTINGS = Path(REPO) / "k8s" / "settings" / "settings.env"
IAM_MARKER = "<!-- tested: test_docs_grant_each_identity_exactly_what_it_uses -->"
# What each identity must reach and nothing more: top-level prefix -> "r" (get) or "rw"
# (get, create, delete). test_access_follows_the_manifests checks the prefixes against the pods' paths.
ACCESS = {
    "PREPARE_GSA": {"photos": "r", "data": "rw"},
    "TRAINER_GSA": {"data": "r", "runs": "rw", "export": "rw"},
    "SERVING_GSA": {"export": "r"},
    "COLORIZE_GSA": {"photos": "r", "export": "r", "colorized": "rw"},
    "DEV_GSA": {"data": "r", "dev": "rw"},
}
PREFIXES = ("photos", "data", "runs", "export", "colorized", "dev")
# Roles a prefix-conditioned binding may be compared with: Cloud Storage's own example conditions use
# the object roles; the legacy roles map to bucket ACLs and are granted on the whole bucket.
OBJECT_ROLES = ("roles/storage.objectViewer", "roles/storage.objectCreator", "roles/storage.objectUser")
CONDITION = re.compile(
    r"resource\.name == '(?P<name>projects/_/buckets/(?P<bucket>[^/']+)/objects/(?P<prefix>[^']+))' "
    r"\|\| resource\.name\.startsWith\('(?P=name)/'\)"
)
WORKLOAD_POOL = re.compile(rf"serviceAccount:{PROJECT}\.svc\.id\.goog\[(?P<ksa>[^\]]+)\]")
DATA, RUNS, EXPORT = f"gs://{BUCKET}/data", f"gs://{BUCKET}/runs", f"gs://{BUCKET}/export"
COLORIZED = f"gs://{BUCKET}/colorized"
_SERVING_STARTUP = textwrap.dedent("""
    import sys, tensorflow as tf
    base = sys.argv[1]
    assert tf.io.gfile.exists(base)                                 # FileSystemStoragePathSource: FileExists
    versions = [c.rstrip("/") for c in tf.io.gfile.listdir(base)]   # GetChildren
    latest = max(int(v) for v in versions if v.isdigit())
    warmup = f"{base}/{latest}/assets.extra/tf_serving_warmup_requests"
    print("warmup file:", tf.io.gfile.exists(warmup))               # warmup: FilesExist
    loaded = tf.saved_model.load(f"{base}/{latest}")
    print("signatures:", sorted(loaded.signatures))
""")
_PROBES = textwrap.dedent("""
    import sys, tensorflow as tf
    for probe in sys.argv[1:]:
        op, path = probe.split(":", 1)
        try:
            if op == "read":
                tf.io.gfile.GFile(path, "rb").read()
            elif op == "write":
                with tf.io.gfile.GFile(path, "w") as handle:
                    handle.write("x")
            else:
                tf.io.gfile.exists(path)
            print(probe, "ok")
        except tf.errors.OpError as exc:
            print(probe, type(exc).__name__)
""")
_GCLOUD = """#!{python}
import json, os, sys
with open(os.environ["GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


class Policy(typing.NamedTuple):
    """What the docs' IAM block sets up: the Google accounts it creates, their bucket bindings, the
    custom roles, and which KSA (namespace/name) may act as which account."""

    created: frozenset  # account e-mails
    bindings: dict  # account e-mail -> tuple of Binding
    roles: dict  # role -> permissions: the predefined ROLES and the block's custom roles
    workload_identity: dict  # "namespace/name" -> account e-mail


emulator = module_fixture(BUCKET)


def settings() -> dict:
    """settings.env as shipped, PROJECT_ID filled in: {key: value}."""
    lines = SETTINGS.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value.replace("PROJECT_ID", PROJECT) for key, value in pairs}


def accounts() -> dict:
    """{settings key: Google account e-mail} of every *_GSA of settings.env."""
    return {key: value for key, value in settings().items() if key.endswith("_GSA")}


def iam_block() -> str:
    """The bash block that follows IAM_MARKER in docs/KUBERNETES.md."""
    text = DOCS.read_text()
    assert IAM_MARKER in text, f"docs/KUBERNETES.md has no {IAM_MARKER}"
    return text.split(IAM_MARKER, 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]


def recorded_gcloud_calls(tmp_path) -> list:
    """Runs the docs' IAM block with a recording `gcloud` on PATH; returns each call's arguments."""
    stub = tmp_path / "bin" / "gcloud"
    stub.parent.mkdir()
    stub.write_text(_GCLOUD.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp_path / "gcloud.jsonl"
    env = {
        "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
        "GCLOUD_LOG": str(log),
        "BUCKET": BUCKET,
        "PROJECT_ID": PROJECT,
    }
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", iam_block()], env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def _flags(args: list) -> dict:
    """--name=value arguments as {name: value}; the docs write every flag that way."""
    return {a[2:].partition("=")[0]: a.partition("=")[2] for a in args if a.startswith("--")}


def condition_prefix(condition: str) -> typing.Optional[str]:
    """The object-name prefix of a `--condition` (gcloud's KEY=VALUE,... form), None for `None`."""
    if condition == "None":
        return None
    fields = dict(item.partition("=")[::2] for item in condition.split(","))
    match = CONDITION.fullmatch(fields.get("expression", ""))
    assert match and fields.get("title"), f"condition not understood: {condition!r}"
    assert match["bucket"] == BUCKET, condition
    return match["prefix"]


def parse_policy(calls: list) -> Policy:
    """The Policy the recorded gcloud calls set up; a call this model doesn't know fails the test."""
    created, roles, bindings, workload_identity = set(), dict(ROLES), {}, {}
    for call in calls:
        words, flags = [a for a in call if not a.startswith("--")], _flags(call)
        if words[:3] == ["iam", "service-accounts", "create"]:
            created.add(f"{words[3]}@{PROJECT}.iam.gserviceaccount.com")
        elif words[:3] == ["iam", "roles", "create"]:
            role = f"projects/{flags['project']}/roles/{words[3]}"
            roles[role] = frozenset(flags["permissions"].split(","))
        elif words[:3] == ["storage", "buckets", "add-iam-policy-binding"]:
            assert words[3] == f"gs://{BUCKET}", call
            account = flags["member"].removeprefix("serviceAccount:")
            assert flags["role"] in roles, f"role {flags['role']} is neither predefined nor created above"
            binding = Binding(flags["role"], roles[flags["role"]], condition_prefix(flags["condition"]))
            bindings[account] = bindings.get(account, ()) + (binding,)
        elif words[:3] == ["iam", "service-accounts", "add-iam-policy-binding"]:
            assert flags["role"] == "roles/iam.workloadIdentityUser", call
            workload_identity[WORKLOAD_POOL.fullmatch(flags["member"])["ksa"]] = words[3]
        else:
            pytest.fail(f"gcloud call the IAM model doesn't know: {call}")
    return Policy(frozenset(created), bindings, roles, workload_identity)


@functools.lru_cache(maxsize=None)
def documented_policy() -> Policy:
    """The docs' Policy, from one run of their IAM block per session."""
    with tempfile.TemporaryDirectory() as tmp:
        return parse_policy(recorded_gcloud_calls(Path(tmp)))


@pytest.fixture(scope="module")
def documented() -> Policy:
    return documented_policy()


def _run(emu, bindings, *args, module="trainer.task"):
    """Runs a CLI (or `python args`) under exactly `bindings`; returns (result, the requests it made)."""
    with emu.policy(bindings) as seen:
        result = forkserver.run(module, args, {**ENV, **emu.env}, wrap=emu.wrap)
    unknown = [(r.method, r.target) for r in seen if r.kind is None]
    assert not unknown, f"requests the IAM model doesn't know (denied): {unknown}"
    return result, seen


def _as(emu, documented, key, *args, module="trainer.task"):
    """`_run` as the Google account of settings key `key`, with the docs' bindings for it."""
    return _run(emu, documented.bindings[accounts()[key]], *args, module=module)


def _denied(requests):
    """(method, target, missing permissions) of the refused requests that matter."""
    return [(r.method, r.target, r.missing) for r in requests if r.denied and not _metadata_probe(r)]


def _metadata_probe(request) -> bool:
    """google-cloud-storage 3.x's background bucket GET for its observability cache: on a 403 it keeps
    fallback values and carries on (google/cloud/storage/_bucket_metadata_cache.py, _fetch_background),
    so it needs no grant. TensorFlow's own bucket GET has no projection parameter and does need one."""
    path, _, query = request.target.partition("?")
    return path == f"/storage/v1/b/{BUCKET}" and "projection=noAcl" in query.split("&")


def _train_flags(model_dir, export_dir):
    return [
        f"--train_data={DATA}/train-*",
        f"--eval_data={DATA}/validation-*",
        f"--model_dir={model_dir}",
        f"--export_dir={export_dir}",
        "--base_filters=4",
        "--batch_size=2",
        "--loss=mse",  # the storage calls are the same for every loss; mse's steps are the cheapest
        "--patience=0",
        "--epochs=1",
    ]


def _reads(requests, part: str) -> collections.Counter:
    """How often each object whose name contains `part` was read (media GETs), by object name."""
    names = (urllib.parse.unquote(r.target.split("?")[0]) for r in requests if r.kind == "XML GET object")
    return collections.Counter(name for name in names if part in name)


def _objects(emu, prefix):
    return [b.name for b in emu.client().list_blobs(BUCKET, prefix=prefix)]


@pytest.fixture(scope="module")
def photos(emulator, tmp_path_factory):
    """Photos on disk and, as the cluster has them, in gs://BUCKET/photos/ (uploaded unrestricted)."""
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, 16)
    bucket = emulator.client().bucket(BUCKET)
    for name in sorted(os.listdir(folder)):
        bucket.blob(f"photos/{name}").upload_from_filename(str(folder / name))
    return folder


@pytest.fixture(scope="module")
def prepared(emulator, documented, photos):
    """gs://BUCKET/photos/ -> gs://BUCKET/data as one task of the prepare Job, as PREPARE_GSA."""
    return _as(
        emulator,
        documented,
        "PREPARE_GSA",
        f"--input_dir=gs://{BUCKET}/photos/",
        f"--output_dir={DATA}",
        "--num_shards=2",
        "--holdout_fraction=0.25",
        "--workers=1",
        "--num_tasks=1",
        "--task_index=0",
        "--run_name=iam-prepare",
        module="trainer.prepare",
    )


@pytest.fixture(scope="module")
def trained(emulator, documented, prepared):
    """A first run of the project (new runs/ and export/), as TRAINER_GSA."""
    assert prepared[0].returncode == 0, prepared[0].stderr
    return _as(emulator, documented, "TRAINER_GSA", *_train_flags(f"{RUNS}/iam-train", EXPORT))


@pytest.fixture(scope="module")
def served(emulator, documented, trained, photos, tmp_path_factory):
    """TF Serving's start-up calls and the client's local load of gs://BUCKET/export, as SERVING_GSA."""
    assert trained[0].returncode == 0, trained[0].stderr
    started = _as(emulator, documented, "SERVING_GSA", "-c", _SERVING_STARTUP, EXPORT, module=None)
    out = tmp_path_factory.mktemp("colorized")
    client = [f"--local_model={EXPORT}", str(photos / "photo000.png"), f"--output_dir={out}"]
    colorized = _as(emulator, documented, "SERVING_GSA", *client, module="trainer.client")
    return started, colorized, out


@pytest.fixture(scope="module")
def colorized(emulator, documented, trained):
    """Task 0 of 2 of the colorize Job as COLORIZE_GSA: gs://BUCKET/photos/ -> gs://BUCKET/colorized with
    the export run in-process; then the same with --overwrite (a new model replaces the outputs)."""
    assert trained[0].returncode == 0, trained[0].stderr
    task = [
        f"--local_model={EXPORT}",
        f"--output_dir={COLORIZED}",
        "--num_tasks=2",
        "--task_index=0",
        "--batch_size=1",
        f"gs://{BUCKET}/photos/",
    ]
    first = _as(emulator, documented, "COLORIZE_GSA", *task, module="trainer.client")
    again = _as(emulator, documented, "COLORIZE_GSA", "--overwrite", *task, module="trainer.client")
    return first, again


@pytest.fixture(scope="module")
def dev_run(emulator, documented, prepared):
    """The dev overlays' work as DEV_GSA: train into gs://BUCKET/dev/, then serve gs://BUCKET/dev/export."""
    assert prepared[0].returncode == 0, prepared[0].stderr
    dev = f"gs://{BUCKET}/dev"
    trained = _as(emulator, documented, "DEV_GSA", *_train_flags(f"{dev}/runs/iam-dev", f"{dev}/export"))
    assert trained[0].returncode == 0, trained[0].stderr
    started = _as(emulator, documented, "DEV_GSA", "-c", _SERVING_STARTUP, f"{dev}/export", module=None)
    return trained, started


def test_docs_grant_each_identity_exactly_what_it_uses(documented):
    """The block creates one account per *_GSA of settings.env and binds roles to those only; what
    the roles allow and what each identity uses are the tests below."""
    assert set(accounts()) == set(ACCESS)
    assert documented.created == set(documented.bindings) == set(accounts().values()), documented


def test_docs_reach_exactly_the_prefixes_of_the_access_table(documented):
    """Per account and prefix: reads (get) and writes (create, delete) allowed exactly as ACCESS says."""
    wrong = []
    for key, email in accounts().items():
        for prefix in PREFIXES:
            mode = ACCESS[key].get(prefix, "")
            expected = {"storage.objects.get": "r" in mode}
            expected |= {p: "w" in mode for p in ("storage.objects.create", "storage.objects.delete")}
            for permission, allowed in expected.items():
                name = f"{prefix}/x"
                if any(b.grants(permission, name) for b in documented.bindings[email]) != allowed:
                    wrong.append(
                        f"{key}: {permission} on {name} should be {'allowed' if allowed else 'refused'}"
                    )
    assert not wrong, wrong


def test_access_follows_the_manifests():
    """ACCESS's prefixes are the top-level folders of the paths each identity's pods are given."""
    from tests.test_manifests import load

    def tops(overlay, *keys):
        [config] = [
            d for d in load(f"overlay:{overlay}") if d["metadata"]["name"].endswith("colorizer-config")
        ]
        return {config["data"][k].split("/")[3] for k in keys}

    assert tops("prepare", "PHOTOS_DIR", "DATA_DIR") == set(ACCESS["PREPARE_GSA"])
    assert tops("gke", "TRAIN_DATA", "EVAL_DATA", "MODEL_DIR", "EXPORT_DIR") == set(ACCESS["TRAINER_GSA"])
    assert tops("serve", "EXPORT_DIR") == set(ACCESS["SERVING_GSA"])
    assert tops("colorize", "PHOTOS_DIR", "EXPORT_DIR", "COLORIZED_DIR") == set(ACCESS["COLORIZE_GSA"])
    assert tops("dev", "TRAIN_DATA", "EVAL_DATA", "MODEL_DIR", "EXPORT_DIR") == set(ACCESS["DEV_GSA"])


def test_each_ksa_of_the_manifests_acts_as_the_account_the_docs_let_it(documented):
    """Every KSA of every overlay is annotated with the account the docs bind it to, and the docs bind
    no KSA that no overlay has."""
    from tests.test_manifests import OVERLAYS, load

    annotated = {}
    for overlay in OVERLAYS:
        for d in load(f"overlay:{overlay}"):
            if d["kind"] == "ServiceAccount":
                email = d["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
                annotated[f"{d['metadata']['namespace']}/{d['metadata']['name']}"] = email.replace(
                    "PROJECT_ID", PROJECT
                )
    assert annotated == documented.workload_identity


def test_prepare_identity_turns_the_bucket_s_photos_into_shards(emulator, prepared):
    result, seen = prepared
    assert result.returncode == 0, result.stderr
    assert not _denied(seen) and {r.kind for r in seen} >= {"objects.list", "objects.insert"}
    assert {"data/train.manifest.json", "data/validation.manifest.json"} <= set(_objects(emulator, "data/"))


def test_training_identity_checkpoints_and_exports(emulator, trained):
    result, seen = trained
    assert result.returncode == 0, result.stderr
    assert not _denied(seen)
    assert ("GET", f"/storage/v1/b/{BUCKET}") in {(r.method, r.target) for r in seen}, (
        "walk never reached the bucket"
    )
    runs, exported = _objects(emulator, "runs/"), _objects(emulator, "export/")
    assert any("/ckpt-" in o for o in runs) and any("events.out.tfevents" in o for o in runs), runs
    assert any(o.endswith("/saved_model.pb") for o in exported), exported
    # What a run costs in requests: a few reads of each shard (a shuffle buffer larger than this
    # 12-pair split would read it ~170 times to fill), and one read of each checkpoint file to verify it.
    shards, saved = _reads(seen, "/data/train-"), _reads(seen, "/checkpoints/ckpt-")
    assert shards and max(shards.values()) <= 8, shards
    verified = {name: count for name, count in saved.items() if "_temp/" not in name}  # not TF's merge
    assert verified and max(verified.values()) <= 2, saved


def test_serving_identity_loads_and_runs_the_export(served):
    (started, start_seen), (colorized, client_seen), out = served
    assert started.returncode == 0, started.stderr
    assert not _denied(start_seen) and "serving_default" in started.stdout
    assert {r.kind for r in start_seen} <= {"objects.get", "objects.list", "XML GET object"}
    assert colorized.returncode == 0, colorized.stderr
    assert not _denied(client_seen) and os.path.getsize(out / "photo000.png") > 0


def test_colorize_identity_colorizes_its_share_of_the_bucket(emulator, colorized):
    (first, first_seen), (again, again_seen) = colorized
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert not _denied(first_seen) and not _denied(again_seen), _denied(first_seen) + _denied(again_seen)
    outputs = _objects(emulator, "colorized/")
    assert 0 < len(outputs) < 16 and all(o.endswith(".png") for o in outputs), "task 0's share of 16 photos"
    replaced = {permission for r in again_seen for permission, _ in r.needs}
    assert "storage.objects.delete" in replaced, "--overwrite replaces existing outputs"


def test_dev_identity_trains_and_serves_under_dev(emulator, dev_run):
    (trained, train_seen), (started, start_seen) = dev_run
    assert not _denied(train_seen) and not _denied(start_seen), _denied(train_seen) + _denied(start_seen)
    assert started.returncode == 0 and "serving_default" in started.stdout, started.stderr
    assert any(o.endswith("/saved_model.pb") for o in _objects(emulator, "dev/export/"))


def test_every_grant_is_used_and_no_smaller_role_would_do(
    documented, prepared, trained, served, colorized, dev_run
):
    """Each binding grants something its identity's work used, and no strictly smaller role covers
    what it was used for. Listing and bucket reads count for bindings without a prefix only: a
    condition on object names never grants them. The library's metadata probe counts for nothing."""
    work = {
        "PREPARE_GSA": prepared[1],
        "TRAINER_GSA": trained[1],
        "SERVING_GSA": served[0][1] + served[1][1],
        "COLORIZE_GSA": colorized[0][1] + colorized[1][1],
        "DEV_GSA": dev_run[0][1] + dev_run[1][1],
    }
    problems = []
    for key, seen in work.items():
        used = [r for r in seen if not r.denied and not _metadata_probe(r)]
        needs = {need for request in used for need in request.needs}
        for binding in documented.bindings[accounts()[key]]:
            problems += _binding_problems(key, binding, needs, documented.roles)
    assert not problems, problems


def _binding_problems(key, binding, needs, roles) -> list:
    where = f"{key}: {binding.role} on {binding.prefix or 'the bucket'}"
    used = {permission for permission, name in needs if binding.grants(permission, name)}
    if not used:
        return [f"{where} is never used"]
    candidates = (
        OBJECT_ROLES + tuple(r for r in roles if r.startswith("projects/")) if binding.prefix else roles
    )
    smaller = [r for r in candidates if roles[r] < binding.permissions and used <= roles[r]]
    return [f"{where} is wider than its use {sorted(used)}: {r} would do" for r in smaller]


@pytest.fixture(scope="module")
def serving_probes(emulator, documented, trained):
    """What serving's account may not do, tried in one process (its TensorFlow starts once): read a
    checkpoint and a data manifest, write into export/, and check the bucket root. Returns each
    probe's outcome (the exception's class name, or "ok") and the requests, told apart by the object
    each needed a permission on."""
    checkpoint = next(o for o in _objects(emulator, "runs/iam-train/") if o.endswith(".index"))
    probes = [
        ("read", f"gs://{BUCKET}/{checkpoint}"),
        ("read", f"{DATA}/train.manifest.json"),
        ("write", f"{EXPORT}/probe.txt"),
        ("exists", f"gs://{BUCKET}"),
    ]
    result, seen = _as(
        emulator, documented, "SERVING_GSA", "-c", _PROBES, *map(":".join, probes), module=None
    )
    assert result.returncode == 0, result.stderr
    refused = {missing[0] for _, _, missing in _denied(seen)}
    assert refused == {"storage.objects.get", "storage.objects.create", "storage.buckets.get"}, _denied(seen)
    outcomes = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    return {target: outcomes[f"{op}:{target}"] for op, target in probes}, seen, checkpoint


def _denied_on(requests, name) -> list:
    """`_denied` of the requests that needed a permission on object `name` (None: on the bucket)."""
    return [
        (r.method, r.target, r.missing)
        for r in requests
        if r.denied and not _metadata_probe(r) and any(obj == name for _, obj in r.needs)
    ]


def test_serving_identity_cannot_read_checkpoints_or_data(serving_probes):
    """Serving's account reads export/ only: a checkpoint or a shard is a 403, however it is asked for."""
    outcomes, seen, checkpoint = serving_probes
    for name in (checkpoint, "data/train.manifest.json"):
        assert outcomes[f"gs://{BUCKET}/{name}"] == "PermissionDeniedError", outcomes
        assert {m[0] for _, _, m in _denied_on(seen, name)} == {"storage.objects.get"}, _denied(seen)


def test_serving_identity_cannot_write(serving_probes):
    """Serving's account is read-only even on export/: a write is a 403 on storage.objects.create."""
    outcomes, seen, _ = serving_probes
    assert outcomes[f"{EXPORT}/probe.txt"] == "PermissionDeniedError", outcomes
    assert {m[0] for _, _, m in _denied_on(seen, "export/probe.txt")} == {"storage.objects.create"}, seen


def test_serving_from_the_bucket_root_would_need_bucket_get(serving_probes):
    """Why --model_base_path must stay below the root: FileExists(gs://BUCKET) is a bucket GET."""
    outcomes, seen, _ = serving_probes
    assert outcomes[f"gs://{BUCKET}"] != "ok", outcomes
    assert _denied_on(seen, None) == [("GET", f"/storage/v1/b/{BUCKET}", ["storage.buckets.get"])]


def test_prepare_identity_cannot_write_the_export(emulator, documented, prepared):
    """A photo that takes over prepare can't plant a model: prepare's account may not create in export/."""
    target = f"{EXPORT}/1/saved_model.pb"
    script = f"import tensorflow as tf\nwith tf.io.gfile.GFile('{target}', 'w') as f: f.write('x')"
    wrote, seen = _as(emulator, documented, "PREPARE_GSA", "-c", script, module=None)
    assert wrote.returncode != 0 and "PermissionDenied" in wrote.stderr
    assert ["storage.objects.create"] in [r.missing for r in seen if r.denied], _denied(seen)
    assert not _objects(emulator, "export/1/")


def test_object_user_alone_fails_the_first_write_on_bucket_get(emulator, prepared):
    """Why training has legacyBucketReader: objectUser alone, first run under new prefixes -> 403 on
    GET /storage/v1/b/BUCKET, found by the trainer's output check before any step."""
    alone = f"gs://{BUCKET}/alone"
    start = time.monotonic()
    with emulator.roles("roles/storage.objectUser") as seen:
        flags = _train_flags(f"{alone}/runs", f"{alone}/export")
        trained = forkserver.run("trainer.task", flags, {**ENV, **emulator.env}, wrap=emulator.wrap)
    assert _denied(seen) == [("GET", f"/storage/v1/b/{BUCKET}", ["storage.buckets.get"])]
    assert trained.returncode == 2 and time.monotonic() - start < 30, trained.stderr
    last = trained.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --model_dir={alone}/runs: permission denied (") and "403" in last, last
    assert "roles/storage.legacyBucketReader" in last and "Traceback" not in trained.stderr
    assert not _objects(emulator, "alone/")


def test_prepare_into_a_prefix_it_cannot_write_fails_before_decoding(emulator, documented, photos):
    """Under serving's read-only account, prepare's output check is refused: one line, exit 2."""
    readonly = f"{EXPORT}/readonly"
    prepared, seen = _as(
        emulator,
        documented,
        "SERVING_GSA",
        f"--input_dir={photos}",
        f"--output_dir={readonly}",
        module="trainer.prepare",
    )
    assert prepared.returncode == 2 and "Traceback" not in prepared.stderr, prepared.stderr
    assert prepared.stderr.strip().splitlines()[-1].startswith(f"error: {readonly}: permission denied")
    assert ["storage.objects.create"] in [r.missing for r in seen if r.denied]
    assert not _objects(emulator, "export/readonly")


def test_legacy_bucket_reader_adds_exactly_bucket_get_to_object_listing():
    """legacyBucketReader is the least for training's bucket-level needs (list and bucket get), without
    creating and maintaining a second custom role."""
    assert ROLES["roles/storage.legacyBucketReader"] == {"storage.buckets.get", "storage.objects.list"}


@pytest.mark.parametrize(
    "condition, prefix",
    [
        ("None", None),
        (
            f"expression=resource.name == 'projects/_/buckets/{BUCKET}/objects/runs' || "
            f"resource.name.startsWith('projects/_/buckets/{BUCKET}/objects/runs/'),title=trainer-runs",
            "runs",
        ),
    ],
)
def test_condition_parsing(condition, prefix):
    assert condition_prefix(condition) == prefix


@pytest.mark.parametrize(
    "condition",
    [
        # a bare startsWith would also grant runs-old/ and runs.bak
        f"expression=resource.name.startsWith('projects/_/buckets/{BUCKET}/objects/runs'),title=t",
        f"expression=resource.name == 'projects/_/buckets/{BUCKET}/objects/runs' || "
        f"resource.name.startsWith('projects/_/buckets/{BUCKET}/objects/export/'),title=t",
        f"expression=resource.name == 'projects/_/buckets/{BUCKET}/objects/runs' || "
        f"resource.name.startsWith('projects/_/buckets/{BUCKET}/objects/runs/')",  # no title
    ],
)
def test_conditions_outside_the_model_are_refused(condition):
    with pytest.raises(AssertionError, match="condition not understood"):
        condition_prefix(condition)


def test_a_prefix_binding_grants_objects_under_it_only():
    viewer = Binding("roles/storage.objectViewer", ROLES["roles/storage.objectViewer"], "export")
    assert viewer.grants("storage.objects.get", "export") and viewer.grants(
        "storage.objects.get", "export/1/a"
    )
    assert not viewer.grants("storage.objects.get", "export-old/1/a") and not viewer.grants(
        "storage.objects.get", None
    )
    assert not viewer.grants("storage.objects.list", None), "listing is checked on the bucket"


def test_unknown_request_kinds_are_denied_and_reported(emulator):
    """A call the permission map doesn't know is refused even with no roles set, and listed."""
    script = "from google.cloud import storage; print(list(storage.Client().list_buckets()))"
    before = len(emulator.unknown)
    listed = forkserver.run(None, ["-c", script], {**ENV, **emulator.env}, timeout=120, wrap=emulator.wrap)
    assert listed.returncode != 0 and "403" in listed.stderr
    assert [(r.method, r.target.split("?")[0]) for r in emulator.unknown[before:]] == [
        ("GET", "/storage/v1/b")
    ]


@pytest.mark.parametrize(
    "method, target, host, kind, permissions",
    [
        ("GET", "/storage/v1/b/bkt", "www.googleapis.com", "buckets.get", {"storage.buckets.get"}),
        (
            "GET",
            "/storage/v1/b/bkt/o?prefix=a%2F",
            "www.googleapis.com",
            "objects.list",
            {"storage.objects.list"},
        ),
        (
            "GET",
            "/storage/v1/b/bkt/o/a%2Fb?fields=size",
            "www.googleapis.com",
            "objects.get",
            {"storage.objects.get"},
        ),
        ("GET", "/bkt/a%2Fb", "storage.googleapis.com", "XML GET object", {"storage.objects.get"}),
        (
            "POST",
            "/upload/storage/v1/b/bkt/o?uploadType=resumable&name=x",
            "www.googleapis.com",
            "objects.insert",
            {"storage.objects.create"},
        ),
        (
            "POST",
            "/storage/v1/b/bkt/o/a/rewriteTo/b/bkt/o/c",
            "www.googleapis.com",
            "objects.rewrite",
            {"storage.objects.get", "storage.objects.create"},
        ),
        (
            "DELETE",
            "/storage/v1/b/bkt/o/a%2Fb",
            "www.googleapis.com",
            "objects.delete",
            {"storage.objects.delete"},
        ),
        (
            "GET",
            "/storage/v1/b/bkt/storageLayout",
            "www.googleapis.com",
            "buckets.getStorageLayout",
            {"storage.objects.list"},
        ),
    ],
)
def test_request_permission_map(method, target, host, kind, permissions):
    assert classify(method, target, host)[:2] == (kind, permissions)


@pytest.mark.parametrize(
    "method, target, host",
    [
        ("GET", "/storage/v1/b?project=p", "www.googleapis.com"),  # buckets.list
        ("GET", "/storage/v1/b/bkt/iam", "www.googleapis.com"),  # buckets.getIamPolicy
        ("GET", "/bkt/a", "www.googleapis.com"),  # the XML API lives on storage.googleapis.com
        ("POST", "/batch/storage/v1", "storage.googleapis.com"),
    ],
)
def test_requests_outside_the_map_are_unknown(method, target, host):
    assert classify(method, target, host) is None
