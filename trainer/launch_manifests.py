"""Kubernetes objects for `trainer.launch`: the manifests in k8s/ with a run's overrides applied.

Built from the same YAML that `kubectl apply` uses, so a launched run and an applied one can't drift.
"""

import base64
import copy
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import yaml

MANIFEST_DIRS = (Path(__file__).resolve().parents[1] / "k8s", Path.cwd() / "k8s")
TRAINER_CONTAINERS = ("trainer", "tensorflow")
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
PATH_FLAGS = ("train_data", "eval_data", "model_dir", "export_dir")
TFJOB = ("kubeflow.org", "v1", "tfjobs")
CHIEF_SELECTOR = {
    "Job": "batch.kubernetes.io/job-name={name}",
    "TFJob": "training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=worker,"
             "training.kubeflow.org/replica-index=0",
}


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
MANIFEST_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
GOOGLE_REGISTRIES = (".pkg.dev", "gcr.io")  # registries that take a Google access token as user oauth2accesstoken
DIGEST_HINT = "pass --image=NAME@sha256:... (after docker push: docker inspect --format='{{index .RepoDigests 0}}' IMAGE)"


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


class LaunchError(Exception):
    """The cluster refused or lacks something: reported in one line, exit code 1."""


def manifest_dir(explicit):
    """k8s/ next to the package (a checkout or editable install), else under the working directory."""
    for path in ([Path(explicit)] if explicit else MANIFEST_DIRS):
        if (path / "job.yaml").is_file():
            return path
    raise UsageError(f"no k8s/job.yaml under {explicit or ' or '.join(map(str, MANIFEST_DIRS))}: pass --manifests")


def load_objects(directory, relative):
    return [d for d in yaml.safe_load_all((directory / relative).read_text()) if d]


def check_args(args):
    """Validates what the cluster would only reject later (or never)."""
    if not NAME.match(args.name):
        raise UsageError(f"--name={args.name!r}: lowercase letters, digits and '-', at most 40 characters")
    if args.workers < 1 or args.gpus < 0:
        raise UsageError("--workers must be >= 1 and --gpus >= 0")
    if args.kind == "tfjob" and args.workers < 2:
        raise UsageError("--kind=tfjob needs --workers >= 2 (one worker is the plain Job)")
    if args.max_hours is not None and not args.max_hours > 0:
        raise UsageError(f"--max_hours={args.max_hours}: must be > 0")
    if args.arg:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the flags' module imports TensorFlow: keep it quiet
        from absl import flags
        import trainer.task  # noqa: F401  (defines the trainer's flags)

        for arg in args.arg:
            match = re.match(r"^--(?:no)?([a-z_0-9]+)(=.*)?$", arg)
            if not match or match.group(1) not in flags.FLAGS:
                raise UsageError(f"--arg={arg!r}: not a flag of python -m trainer.task")


def split_image(image):
    """(registry, repository, tag) of an image reference, Docker's defaults filled in."""
    name, tag = image, "latest"
    if ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return "registry-1.docker.io", name if rest else f"library/{name}", tag


def google_access_token():
    """An access token from Application Default Credentials (what Artifact Registry and gcr.io accept)."""
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(google.auth.transport.requests.Request())
    except google.auth.exceptions.GoogleAuthError as exc:
        raise OSError(f"no Google credentials for the registry (gcloud auth application-default login): {exc}") from None
    return credentials.token


def pinned_image(image, timeout=30):
    """The image by digest: unchanged if pinned, else the tag resolved with the registry's v2 API.

    Workers restarted hours apart must run the same code, and a tag can move in between. The digest
    is the registry's Docker-Content-Digest answer to HEAD /v2/<repository>/manifests/<tag>.
    """
    if DIGEST.search(image):
        return image
    registry, repository, tag = split_image(image)
    scheme = "http" if registry.split(":")[0] in ("localhost", "127.0.0.1") else "https"
    request = urllib.request.Request(f"{scheme}://{registry}/v2/{repository}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": ", ".join(MANIFEST_TYPES)})
    try:
        if registry.endswith(GOOGLE_REGISTRIES):
            token = base64.b64encode(f"oauth2accesstoken:{google_access_token()}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            digest = response.headers.get("Docker-Content-Digest", "")
    except urllib.error.HTTPError as exc:
        raise UsageError(f"--image={image}: the registry answered HTTP {exc.code} for tag {tag}; {DIGEST_HINT}") from None
    except OSError as exc:  # unreachable registry, timeout, no credentials
        raise UsageError(f"--image={image}: can't resolve the tag ({exc}); {DIGEST_HINT}") from None
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise UsageError(f"--image={image}: the registry gave no digest for tag {tag}; {DIGEST_HINT}")
    name = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return f"{name}@{digest}"


def trainer_args(args, base_args):
    """The trainer's flags: the manifest's, with paths and --arg overrides replacing same-named ones."""
    overrides = [f"--{flag}={getattr(args, flag)}" for flag in PATH_FLAGS if getattr(args, flag)]
    if not args.model_dir:  # one checkpoint folder per run: resubmitting a name resumes that run
        overrides.append(f"--model_dir=$(MODEL_DIR)/{args.name}")
    if args.workers > 1:
        overrides.append("--strategy=multi_worker")
    overrides += args.arg or []
    names = {o.split("=", 1)[0].replace("--no", "--", 1) for o in overrides}
    kept = [a for a in base_args if a.split("=", 1)[0].replace("--no", "--", 1) not in names]
    return kept + overrides


def set_resources(pod_spec, args):
    """Image, flags, GPUs (0: CPU only, no GPU node selector) and optional CPU, memory and Spot nodes."""
    [container] = [c for c in pod_spec["containers"] if c["name"] in TRAINER_CONTAINERS]
    container["image"] = args.image
    container["args"] = trainer_args(args, container.get("args", []))
    resources = container["resources"]
    for kind in ("requests", "limits"):
        if args.gpus:
            resources[kind]["nvidia.com/gpu"] = str(args.gpus)
        else:
            resources[kind].pop("nvidia.com/gpu", None)
        for key, value in (("cpu", args.cpu), ("memory", args.memory)):
            if value:
                resources[kind][key] = value
    if not args.gpus:
        pod_spec.get("nodeSelector", {}).pop("cloud.google.com/gke-accelerator", None)
        pod_spec["tolerations"] = [t for t in pod_spec.get("tolerations", []) if t.get("key") != "nvidia.com/gpu"]
    if args.spot:
        pod_spec.setdefault("nodeSelector", {})["cloud.google.com/gke-spot"] = "true"
        pod_spec.setdefault("tolerations", []).append(
            {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"})
    return container


def label(obj, template, name):
    """Marks the object and its pods with the run name, so runs never select each other's pods."""
    for meta in (obj["metadata"], template["metadata"]):
        meta.setdefault("labels", {})["colorizer.dev/run"] = name


def build(args, directory):
    """The objects `submit` creates, in creation order."""
    if args.workers == 1:
        [job] = [d for d in load_objects(directory, "job.yaml") if d["kind"] == "Job"]
        return [single_job(job, args)]
    if args.kind == "tfjob":
        [tfjob] = load_objects(directory, "components/tfjob/tfjob.yaml")
        return [tf_job(tfjob, args)]
    objects = load_objects(directory, "components/multinode/multinode.yaml")
    [service] = [d for d in objects if d["kind"] == "Service"]
    [job] = [d for d in objects if d["kind"] == "Job"]
    return indexed_job(job, service, args)


def _renamed(obj, args, name):
    obj = copy.deepcopy(obj)
    obj["metadata"].update(name=name, namespace=args.namespace)
    obj["metadata"].pop("annotations", None)
    return obj


def deadline(run_spec, args):
    """--max_hours as activeDeadlineSeconds: the backstop for failures the policies ignore (preemptions)."""
    if args.max_hours is not None:
        run_spec["activeDeadlineSeconds"] = int(args.max_hours * 3600)


def single_job(job, args):
    job = _renamed(job, args, args.name)
    label(job, job["spec"]["template"], args.name)
    set_resources(job["spec"]["template"]["spec"], args)
    deadline(job["spec"], args)
    return job


def indexed_job(job, service, args):
    """Indexed Job + headless Service, wired the way trainer/distribute.py reads them."""
    job, service = _renamed(job, args, args.name), _renamed(service, args, f"{args.name}-workers")
    template = job["spec"]["template"]
    label(job, template, args.name)
    label(service, {"metadata": {}}, args.name)
    service["spec"]["selector"]["colorizer.dev/run"] = args.name
    job["spec"]["completions"] = job["spec"]["parallelism"] = args.workers
    deadline(job["spec"], args)
    template["spec"]["subdomain"] = service["metadata"]["name"]
    container = set_resources(template["spec"], args)
    for env in container["env"]:
        if env["name"] == "COLORIZER_NUM_WORKERS":
            env["value"] = str(args.workers)
        elif env["name"] == "COLORIZER_SERVICE":
            env["value"] = service["metadata"]["name"]
    return [job, service]


def tf_job(tfjob, args):
    tfjob = _renamed(tfjob, args, args.name)
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    worker["replicas"] = args.workers
    deadline(tfjob["spec"]["runPolicy"], args)
    label(tfjob, worker["template"], args.name)
    set_resources(worker["template"]["spec"], args)
    return tfjob
