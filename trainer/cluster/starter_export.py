"""`python -m trainer.launch serve-starter`: the packaged starter model as version 1 of an export folder.

    serve-starter --export_dir=gs://BUCKET/export

So the serving overlays answer before the first cluster run. Exports a run writes later get a
Unix-time version, which outranks 1, and `promote` treats version 1 as any other. Refused when the
version exists. Files are uploaded one by one with saved_model.pb last, as exports are
(trainer/serve/export.py: TF Serving loads a version only once that file is there); a local
folder gets a copy renamed into place. TensorFlow-free, like the rest of the launcher.
"""

import os
import shutil
import sys

from trainer.cluster.manifests import UsageError
from trainer.data import gcs
from trainer.errors import ColorizerError
from trainer.serve.limits import STARTER_DIR

MODEL_FILE = "saved_model.pb"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve-starter", help="put the packaged starter model into an export folder as version 1"
    )
    p.add_argument(
        "--export_dir", required=True, help="the serving overlays' EXPORT_DIR, e.g. gs://BUCKET/export"
    )
    p.add_argument("--version", type=int, default=1, help="version folder (default 1: any run outranks it)")


def starter_files() -> list:
    """(local path, path relative to the version folder) of the starter's files, saved_model.pb last."""
    if not os.path.exists(os.path.join(STARTER_DIR, MODEL_FILE)):
        raise UsageError(f"the starter model is not in this installation ({STARTER_DIR} is missing)")
    files = [
        (os.path.join(root, name), os.path.relpath(os.path.join(root, name), STARTER_DIR))
        for root, _, names in os.walk(STARTER_DIR)
        for name in names
    ]
    return sorted(files, key=lambda pair: (pair[1] == MODEL_FILE, pair[1]))


def place(export_dir: str, version: int) -> str:
    """Copies the starter into `{export_dir}/{version}/`; returns that folder."""
    files = starter_files()
    if gcs.is_gcs(export_dir):
        target = f"{export_dir.rstrip('/')}/{version}"
        if gcs.list_generations(target, ""):
            raise UsageError(f"{target}/ exists: pass another --version or remove it")
        pairs = [(local, f"{target}/{relative}") for local, relative in files]
        gcs.upload(pairs[:-1], {})
        gcs.upload(pairs[-1:], {})  # saved_model.pb last
        return target
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target):
        raise UsageError(f"{target} exists: pass another --version or remove it")
    staged = os.path.join(export_dir, f".starter-{version}")  # TF Serving ignores names not all digits
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(STARTER_DIR, staged)
    os.rename(staged, target)
    return target


def run(args) -> int:
    if args.version < 1:
        raise UsageError(f"--version={args.version}: must be at least 1")
    try:
        target = place(args.export_dir, args.version)
    except ColorizerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"starter model -> {target}: TF Serving loads it at its next poll of {args.export_dir}")
    return 0
