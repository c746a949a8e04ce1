"""`python -m trainer.launch promote|rollback`: gate, switch and watch the versions TF Serving serves.

The state lives in the ConfigMap `colorizer-serving-models` (trainer/serve/promote.py): its model config,
which the serving pods read as a mounted file, and the history of live versions. `Cluster` is the
only part that talks to Kubernetes, so tests drive the same steps against a fake. trainer.serve.promote
renders TF Serving's protos with TensorFlow's, so it is imported only by these commands: the other
launcher commands stay TensorFlow-free.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from typing import Optional

import urllib3
from kubernetes import client

from trainer.cluster.k8s import call
from trainer.cluster.manifests import LaunchError, UsageError

SERVING_SELECTOR = "app.kubernetes.io/name=colorizer,app.kubernetes.io/component=serving"
REST_PORT = 8501

PROXY_TIMEOUT_SECONDS = 10  # per status poll: a pod that accepts but never answers counts as not ready


@dataclasses.dataclass(frozen=True, kw_only=True)
class SwitchRequest:
    """What `rollback` (and `promote`) are asked: the model, whether and how long to wait for it to load."""

    namespace: str
    model_name: str
    wait: bool
    timeout: float
    poll_seconds: float

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """The request from the command line; the fields are its flags."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromoteRequest(SwitchRequest):
    """`promote`: the version to make live and the gate it must pass against the live one (unless forced)."""

    version: int
    image_dir: Optional[str]
    psnr_margin: float
    colourfulness_margin: float
    force: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """The request; the gate's margins default to promote's (imported here: it loads TensorFlow)."""
        from trainer.serve import promote

        defaults = {
            "psnr_margin": promote.PSNR_MARGIN_DB,
            "colourfulness_margin": promote.COLOURFULNESS_MARGIN,
        }
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**values, **{name: value for name, value in defaults.items() if values[name] is None}})


class Cluster:
    """The serving state on a real cluster, through the API server (pods reached by its pod proxy)."""

    def __init__(self, api, namespace: str):
        self.core, self.namespace = client.CoreV1Api(api), namespace

    def read(self) -> tuple:
        """(model config text, annotations, EXPORT_DIR)."""
        from trainer.serve import promote

        models = call(
            f"reading ConfigMap {promote.CONFIGMAP}",
            self.core.read_namespaced_config_map,
            promote.CONFIGMAP,
            self.namespace,
        )
        settings = call(
            "reading ConfigMap colorizer-config",
            self.core.read_namespaced_config_map,
            "colorizer-config",
            self.namespace,
        )
        return (
            (models.data or {}).get(promote.CONFIG_KEY, ""),
            models.metadata.annotations or {},
            (settings.data or {})["EXPORT_DIR"],
        )

    def write(self, text: str, live_history: list) -> None:
        """Replaces the model config and the live history, then makes every serving pod re-read it."""
        from trainer.serve import promote

        body = {
            "data": {promote.CONFIG_KEY: text},
            "metadata": {"annotations": {promote.HISTORY_ANNOTATION: json.dumps(live_history)}},
        }
        call(
            f"updating ConfigMap {promote.CONFIGMAP}",
            self.core.patch_namespaced_config_map,
            promote.CONFIGMAP,
            self.namespace,
            body,
        )
        # A pod update makes the kubelet sync that pod now, which re-projects its ConfigMap volumes
        # (pkg/volume/configmap RequiresRemount), instead of at its next periodic sync (up to a minute).
        stamp = {"metadata": {"annotations": {"colorizer.dev/models-config": str(hash(text))}}}
        for pod in self.pods():
            call(f"annotating pod {pod}", self.core.patch_namespaced_pod, pod, self.namespace, stamp)

    def pods(self) -> list:
        items = call(
            "listing serving pods",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=SERVING_SELECTOR,
        ).items
        return sorted(p.metadata.name for p in items if p.status.phase == "Running")

    def model_status(self, pod: str, model_name: str) -> dict:
        """{version: state} from the pod's GET /v1/models/NAME ({} when the pod doesn't answer yet).

        The API server's own refusals (401, 403: no RBAC `get pods/proxy`) are errors, not a wait.
        """
        try:
            response = call(
                f"reading /v1/models/{model_name} of pod {pod} through the API server",
                self.core.connect_get_namespaced_pod_proxy_with_path,
                f"{pod}:{REST_PORT}",
                self.namespace,
                f"v1/models/{model_name}",
                _preload_content=False,
                _request_timeout=PROXY_TIMEOUT_SECONDS,
            )
        except LaunchError as exc:
            if "HTTP 401:" in str(exc) or "HTTP 403:" in str(exc):
                raise
            return {}
        except urllib3.exceptions.HTTPError:  # no answer in time (the API server lets proxy calls hang)
            return {}
        try:
            return {
                int(s["version"]): s["state"]
                for s in json.loads(response.data).get("model_version_status", [])
            }
        except (ValueError, KeyError):
            return {}


def wait_available(cluster, model_name: str, version: int, timeout: float, poll: float) -> list:
    """Waits until every serving pod reports `version` AVAILABLE; returns the pods."""
    deadline = time.monotonic() + timeout
    while True:
        pods = cluster.pods()
        waiting = [p for p in pods if cluster.model_status(p, model_name).get(version) != "AVAILABLE"]
        if pods and not waiting:
            return pods
        if time.monotonic() > deadline:
            raise LaunchError(
                f"version {version} not AVAILABLE within {timeout:.0f}s on "
                f"{', '.join(waiting) or 'any pod (no serving pod is running)'}"
            )
        time.sleep(poll)


def switch(cluster, request: SwitchRequest, live: Optional[int], target: int, live_history: list) -> None:
    """Writes the configs that make `target` live, waiting for it to load between them."""
    from trainer.serve import promote

    _, _, export_dir = cluster.read()
    steps = promote.phases(live, target)
    for index, (versions, labels) in enumerate(steps):
        cluster.write(promote.render(request.model_name, export_dir, versions, labels), live_history)
        if index < len(steps) - 1 or request.wait:
            pods = wait_available(cluster, request.model_name, target, request.timeout, request.poll_seconds)
    if request.wait:
        print(
            f"version {target} is live on {len(pods)} pod(s); try it:\n"
            f"  kubectl -n {request.namespace} port-forward svc/colorizer-serving 8501:8501 &\n"
            f"  curl -s http://localhost:8501/v1/models/{request.model_name}/labels/stable"
        )


def score(export_dir: str, version: int, image_dir: str) -> dict:
    """trainer.evaluate's report for one exported version on the user's held-out photos."""
    from trainer.errors import ColorizerError
    from trainer.serve.evaluate import evaluate

    # The gate reads only the metrics; the report's files go with the temporary directory.
    try:
        with tempfile.TemporaryDirectory(prefix=f"colorizer-{version}-") as report_dir:
            return evaluate(f"{export_dir.rstrip('/')}/{version}", report_dir, image_dir=image_dir)
    except ColorizerError as exc:
        raise UsageError(str(exc)) from None


def run_promote(cluster, request: PromoteRequest) -> int:
    """Makes `request.version` live if it passes the gate against the live version (or is forced)."""
    from trainer.serve import promote

    text, annotations, export_dir = cluster.read()
    live, live_history = promote.live_version(text), promote.history(annotations)
    if live == request.version:
        raise UsageError(f"version {request.version} is already live")
    if live is not None and not request.force:
        if not request.image_dir:
            raise UsageError(
                "pass --image_dir=HELD_OUT_PHOTOS to score the candidate against the live version, or --force"
            )
        reasons = promote.gate(
            score(export_dir, request.version, request.image_dir),
            score(export_dir, live, request.image_dir),
            request.psnr_margin,
            request.colourfulness_margin,
        )
        if reasons:
            raise LaunchError(
                f"refused: version {request.version} vs live {live}: {'; '.join(reasons)} "
                "(--force to override)"
            )
    switch(cluster, request, live, request.version, live_history + [request.version])
    print(f"promoted {request.version}" + (f" (previous: {live})" if live else ""), file=sys.stderr)
    return 0


def run_rollback(cluster, request: SwitchRequest) -> int:
    """Makes the version live before the current one live again (the history is in the ConfigMap)."""
    from trainer.serve import promote

    text, annotations, _ = cluster.read()
    live, live_history = promote.live_version(text), promote.history(annotations)
    if len(live_history) < 2 or live_history[-1] != live:
        raise LaunchError("no previous live version to roll back to")
    target = live_history[-2]
    switch(cluster, request, live, target, live_history[:-1])
    print(f"rolled back to {target} (was {live})", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    """The promote and rollback subcommands; their flags are PromoteRequest's and SwitchRequest's fields."""
    for name in ("promote", "rollback"):
        p = sub.add_parser(
            name,
            help="make a version live (after the gate)"
            if name == "promote"
            else "make the previous live version live again",
        )
        if name == "promote":
            p.add_argument(
                "version", type=int, help="the exported version (its folder name under EXPORT_DIR)"
            )
            p.add_argument(
                "--image_dir", help="held-out photos scored with trainer.evaluate, candidate vs live"
            )
            p.add_argument(
                "--psnr_margin",
                type=float,  # None: trainer.serve.promote's (PromoteRequest.from_args)
                help="refuse when PSNR is lower than the live version's by more than this (dB)",
            )
            p.add_argument(
                "--colourfulness_margin",
                type=float,
                help="refuse when colourfulness is lower by more than this fraction",
            )
            p.add_argument("--force", action="store_true", help="skip the gate")
        p.add_argument("--model_name", default="colorizer")
        p.add_argument(
            "--wait", action="store_true", help="wait until every serving pod serves it, print a curl"
        )
        p.add_argument("--timeout", type=float, default=600, help="seconds to wait for a version to load")


def run(args: argparse.Namespace, cluster) -> int:
    """promote or rollback, its request read from the command line."""
    if args.command == "promote":
        return run_promote(cluster, PromoteRequest.from_args(args))
    return run_rollback(cluster, SwitchRequest.from_args(args))
