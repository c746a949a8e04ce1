"""The product under the exact IAM roles docs/KUBERNETES.md grants, enforced by the GCS test front.

Why the trainer needs more than roles/storage.objectUser: TensorFlow's `RecursivelyCreateDir`
(behind every checkpoint, summary and export directory) walks up from the target until a level
exists, and at gs://BUCKET/ it asks for the bucket itself, GET /storage/v1/b/BUCKET, which needs
storage.buckets.get. objectUser and objectViewer don't have it. In TensorFlow's source (lines as
of google/tsl@5db465fe, the same bodies are in TF 2.21's
third_party/xla/xla/tsl/platform/cloud/gcs_file_system.cc):
  * tsl/platform/file_system.cc:196-225 (google/tsl@7c6e0ab0): RecursivelyCreateDir calls
    FileExists (203) on each parent, IsDirectory (208) on the first that exists, and returns any
    error other than NOT_FOUND (218), so a 403 at the bucket fails the whole makedirs;
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

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO, write_photos
from tests.gcs_emulator import ROLES, classify, module_fixture

BUCKET = "colorizer-iam"
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
# What docs/KUBERNETES.md should grant on the bucket (gcloud storage buckets add-iam-policy-binding).
TRAINER_ROLES = ("roles/storage.objectUser", "roles/storage.legacyBucketReader")
SERVING_ROLES = ("roles/storage.objectViewer",)
DATA, RUNS, EXPORT = f"gs://{BUCKET}/data", f"gs://{BUCKET}/runs", f"gs://{BUCKET}/export"
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


emulator = module_fixture(BUCKET)


def _run(emu, roles, *args, module="trainer.task"):
    """Runs a CLI (or `python args`) under exactly `roles`; returns (result, the requests it made)."""
    command = [sys.executable, "-m", module, *args] if module else [sys.executable, *args]
    with emu.roles(*roles) as seen:
        result = subprocess.run(
            emu.wrap(command), cwd=REPO, env={**ENV, **emu.env}, capture_output=True, text=True, timeout=600
        )
    unknown = [(r.method, r.target) for r in seen if r.kind is None]
    assert not unknown, f"requests the IAM model doesn't know (denied): {unknown}"
    return result, seen


def _denied(requests):
    return [(r.method, r.target, r.missing) for r in requests if r.denied]


@pytest.fixture(scope="module")
def data(emulator, tmp_path_factory):
    """Shards in gs://BUCKET/data, written by trainer.prepare under the trainer's roles."""
    photos = tmp_path_factory.mktemp("photos")
    write_photos(photos, 16)
    prepared, seen = _run(
        emulator,
        TRAINER_ROLES,
        f"--input_dir={photos}",
        f"--output_dir={DATA}",
        "--num_shards=2",
        "--holdout_fraction=0.25",
        "--workers=1",
        module="trainer.prepare",
    )
    assert prepared.returncode == 0, prepared.stderr
    assert not _denied(seen) and {r.kind for r in seen} >= {"objects.list", "objects.insert"}
    return photos


def _train_flags(model_dir, export_dir):
    return [
        f"--train_data={DATA}/train-*",
        f"--eval_data={DATA}/validation-*",
        f"--model_dir={model_dir}",
        f"--export_dir={export_dir}",
        "--base_filters=4",
        "--batch_size=2",
        "--patience=0",
        "--epochs=1",
    ]


def test_object_user_alone_fails_the_first_write_on_bucket_get(emulator, data):
    """The defect: objectUser alone, first run under new prefixes -> 403 on GET /storage/v1/b/BUCKET."""
    alone = f"gs://{BUCKET}/alone"
    start = time.monotonic()
    trained, seen = _run(
        emulator, ("roles/storage.objectUser",), *_train_flags(f"{alone}/runs", f"{alone}/export")
    )
    assert _denied(seen) == [("GET", f"/storage/v1/b/{BUCKET}", ["storage.buckets.get"])]
    # Found by the trainer's output check before any step: one line naming the flag and the roles.
    assert trained.returncode == 2 and time.monotonic() - start < 30, trained.stderr
    last = trained.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --model_dir={alone}/runs: permission denied (") and "403" in last, last
    assert "roles/storage.legacyBucketReader" in last and "Traceback" not in trained.stderr
    assert not list(emulator.client().list_blobs(BUCKET, prefix="alone/"))


def test_documented_roles_prepare_train_export_and_load(emulator, data, tmp_path):
    """Trainer roles: checkpoints, summaries and export succeed; serving roles: the export loads."""
    trained, seen = _run(emulator, TRAINER_ROLES, *_train_flags(RUNS, EXPORT))
    assert trained.returncode == 0, trained.stderr
    assert not _denied(seen)
    assert ("GET", f"/storage/v1/b/{BUCKET}") in {(r.method, r.target) for r in seen}, (
        "walk never reached the bucket"
    )
    objects = [b.name for b in emulator.client().list_blobs(BUCKET)]
    assert any(o.startswith("runs/") and "/ckpt-" in o for o in objects), objects
    assert any(o.startswith("runs/") and "events.out.tfevents" in o for o in objects), objects
    assert any(o.startswith("export/") and o.endswith("/saved_model.pb") for o in objects), objects

    colorized, seen = _run(
        emulator,
        SERVING_ROLES,
        f"--local_model={EXPORT}",
        str(data / "photo000.png"),
        f"--output_dir={tmp_path}/out",
        module="trainer.client",
    )
    assert colorized.returncode == 0, colorized.stderr
    assert not _denied(seen) and os.path.getsize(tmp_path / "out" / "photo000.png") > 0
    served, seen = _run(emulator, SERVING_ROLES, "-c", _SERVING_STARTUP, EXPORT, module=None)
    assert served.returncode == 0, served.stderr
    assert not _denied(seen) and "serving_default" in served.stdout
    assert {r.kind for r in seen} <= {"objects.get", "objects.list", "XML GET object"}


def test_prepare_into_a_bucket_it_cannot_write_fails_before_decoding(emulator, data):
    """Under read-only roles, prepare's output check is refused: one line, exit 2, nothing written."""
    prepared, seen = _run(
        emulator,
        SERVING_ROLES,
        f"--input_dir={data}",
        f"--output_dir=gs://{BUCKET}/readonly",
        module="trainer.prepare",
    )
    assert prepared.returncode == 2 and "Traceback" not in prepared.stderr, prepared.stderr
    assert (
        prepared.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: gs://{BUCKET}/readonly: permission denied")
    )
    # (google-cloud-storage also tries a bucket GET of its own, denied and ignored by the library)
    assert ["storage.objects.create"] in [r.missing for r in seen if r.denied]
    assert not list(emulator.client().list_blobs(BUCKET, prefix="readonly"))


def test_serving_roles_cannot_write(emulator):
    """objectViewer is read-only: a write under it is a 403 on storage.objects.create."""
    script = f"import tensorflow as tf\nwith tf.io.gfile.GFile('{EXPORT}/probe.txt', 'w') as f: f.write('x')"
    wrote, seen = _run(emulator, SERVING_ROLES, "-c", script, module=None)
    assert wrote.returncode != 0 and "PermissionDenied" in wrote.stderr
    assert {m[0] for _, _, m in _denied(seen)} == {"storage.objects.create"}, _denied(seen)


def test_serving_from_the_bucket_root_would_need_bucket_get(emulator):
    """Why --model_base_path must stay below the root: FileExists(gs://BUCKET) is a bucket GET."""
    script = f"import tensorflow as tf; tf.io.gfile.exists('gs://{BUCKET}')"
    checked, seen = _run(emulator, SERVING_ROLES, "-c", script, module=None)
    assert checked.returncode != 0
    assert _denied(seen) == [("GET", f"/storage/v1/b/{BUCKET}", ["storage.buckets.get"])]


def test_legacy_bucket_reader_adds_exactly_bucket_get_to_object_user():
    """objectUser + legacyBucketReader is the least privilege: the same set as a custom role with only
    storage.buckets.get, without creating and maintaining a custom role."""
    trainer = ROLES["roles/storage.objectUser"] | ROLES["roles/storage.legacyBucketReader"]
    assert trainer - ROLES["roles/storage.objectUser"] == {"storage.buckets.get"}


def test_unknown_request_kinds_are_denied_and_reported(emulator):
    """A call the permission map doesn't know is refused even with no roles set, and listed."""
    script = "from google.cloud import storage; print(list(storage.Client().list_buckets()))"
    command = emulator.wrap([sys.executable, "-c", script])
    before = len(emulator.unknown)
    listed = subprocess.run(
        command, cwd=REPO, env={**ENV, **emulator.env}, capture_output=True, text=True, timeout=120
    )
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
