"""Chooses the `tf.distribute` strategy from the environment; the training loop is the same under all.

  * `TF_CONFIG` naming more than one task (Kubeflow TFJob, Vertex AI) -> MultiWorkerMirroredStrategy.
  * An Indexed Job pod (`JOB_COMPLETION_INDEX` plus `COLORIZER_NUM_WORKERS` > 1) -> the cluster is
    built from the pod names `{COLORIZER_JOB_NAME}-{i}.{COLORIZER_SERVICE}:{COLORIZER_PORT}`.
  * Otherwise MirroredStrategy over the local GPUs (one CPU replica when there are none).

The caller passes the environment as a plain mapping; only `trainer.task` reads `os.environ`.
"""

import dataclasses
import json
import socket
import time

import tensorflow as tf
from absl import logging

from trainer.errors import ConfigError, StoppedError, TransientError, first_line
from trainer.train.config import STRATEGIES

DEFAULT_PORT = 2222
# What connecting to a peer that went away raises; anything else (a port in use, a bad address)
# would fail the same way after a restart, so it stays an error that counts.
FORMATION_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A multi-worker cluster: every worker's address and this process's place in it."""

    jobs: tuple  # ((job name, (address, ...)), ...): "chief" (optional) and "worker"
    task_type: str
    task_index: int
    source: str  # "TF_CONFIG" or "indexed job"

    @property
    def workers(self) -> tuple:
        return tuple(a for _, addresses in self.jobs for a in addresses)

    @property
    def spec(self) -> tf.train.ClusterSpec:
        return tf.train.ClusterSpec({job: list(addresses) for job, addresses in self.jobs})


def _from_tf_config(text: str) -> Cluster:
    try:
        config = json.loads(text)
        jobs, task = config["cluster"], config["task"]
        kept = tuple((job, tuple(jobs[job])) for job in ("chief", "worker") if jobs.get(job))
        return Cluster(kept, task["type"], int(task["index"]), "TF_CONFIG")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"TF_CONFIG is not valid cluster JSON ({exc})") from None


def parse_overrides(text: str) -> dict:
    """`name:port=addr:port,...` (like curl's --resolve) -> {name:port: addr:port}; for local tests."""
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 or ":" not in p[0] or ":" not in p[1] for p in pairs):
        raise ConfigError(f"COLORIZER_PEER_OVERRIDES={text!r}: expected host:port=addr:port[,...]")
    return {k.strip(): v.strip() for k, v in pairs}


def _from_indexed_job(environ) -> Cluster:
    try:
        count, index = int(environ["COLORIZER_NUM_WORKERS"]), int(environ["JOB_COMPLETION_INDEX"])
        job, service = environ["COLORIZER_JOB_NAME"], environ["COLORIZER_SERVICE"]
        port = int(environ.get("COLORIZER_PORT", DEFAULT_PORT))
    except KeyError as exc:
        raise ConfigError(f"Indexed Job pod without {exc.args[0]}: set it in the manifest") from None
    except ValueError as exc:
        raise ConfigError(f"Indexed Job environment: {exc}") from None
    if not 0 <= index < count:
        raise ConfigError(f"JOB_COMPLETION_INDEX={index} outside 0..{count - 1}")
    overrides = parse_overrides(environ.get("COLORIZER_PEER_OVERRIDES", ""))
    names = [f"{job}-{i}.{service}:{port}" for i in range(count)]
    return Cluster((("worker", tuple(overrides.get(n, n) for n in names)),), "worker", index, "indexed job")


def _worker_count(environ) -> int:
    try:
        return int(environ.get("COLORIZER_NUM_WORKERS", "1"))
    except ValueError:
        raise ConfigError(
            f"COLORIZER_NUM_WORKERS={environ['COLORIZER_NUM_WORKERS']!r}: not a number"
        ) from None


def resolve_cluster(environ) -> "Cluster | None":
    """The multi-worker cluster this process belongs to, or None when it runs alone."""
    if environ.get("TF_CONFIG"):
        cluster = _from_tf_config(environ["TF_CONFIG"])
    elif "JOB_COMPLETION_INDEX" in environ and _worker_count(environ) > 1:
        cluster = _from_indexed_job(environ)
    else:
        return None
    return cluster if len(cluster.workers) > 1 else None


def wait_for_peers(
    addresses, timeout_seconds: float, resolve=socket.getaddrinfo, stop_requested=lambda: False
):
    """Blocks until every peer's host name resolves: a pod's DNS record appears only with the pod.

    A peer still missing after `timeout_seconds` is transient (its pod not scheduled yet, a node
    being replaced): the Job should retry, not fail. A SIGTERM meanwhile stops at once (exit 143).
    """
    deadline = time.monotonic() + timeout_seconds
    pending = [a.rsplit(":", 1)[0] for a in addresses]
    while pending:
        if stop_requested():
            raise StoppedError("stopped by SIGTERM while waiting for peers; nothing to save yet")
        pending = [h for h in pending if not _resolves(h, resolve)]
        if pending and time.monotonic() > deadline:
            raise TransientError(
                f"peer {pending[0]} did not resolve within {timeout_seconds:.0f}s "
                f"({len(pending)} of {len(addresses)} missing)"
            )
        if pending:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _resolves(host: str, resolve) -> bool:
    try:
        resolve(host, None)
        return True
    except OSError:
        return False


def count_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes taking part in training (1 unless multi-worker)."""
    resolver = strategy.cluster_resolver
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, ())) for job in ("chief", "worker")) or 1


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has reached it (one all-reduce); alone, at once. A lost peer raises
    what any collective raises (the caller's peer-lost exit)."""
    if count_workers(strategy) > 1:
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
        logging.info("every worker reached the end: the chief's export has landed")


def build_strategy(
    name: str = "auto",
    environ=None,
    peer_timeout_seconds: float = 600,
    collective_timeout_seconds: float = 0,
    stop_requested=lambda: False,
) -> tf.distribute.Strategy:
    """Builds the strategy `name` asks for; `auto` decides from `environ` as the module says."""
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy={name!r}: choose one of {', '.join(STRATEGIES)}")
    cluster = resolve_cluster(environ or {})
    if name == "multi_worker" or (name == "auto" and cluster):
        strategy = _multi_worker(cluster, peer_timeout_seconds, collective_timeout_seconds, stop_requested)
        logging.info(
            "strategy MultiWorkerMirroredStrategy: %d replica(s), %s cluster %s, this is %s %d",
            strategy.num_replicas_in_sync,
            cluster.source,
            list(cluster.workers),
            cluster.task_type,
            cluster.task_index,
        )
        return strategy
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    else:
        strategy = tf.distribute.MirroredStrategy()
    logging.info("strategy %s: %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def communication_options(
    gpus, collective_timeout_seconds: float
) -> tf.distribute.experimental.CommunicationOptions:
    """NCCL all-reduce when this worker has GPUs, the ring over gRPC on CPUs.

    The ring copies GPU tensors through host memory and gRPC: much slower between GPU nodes.
    A timeout (0: none) is for debugging only: TF starts a thread per collective that lives for the
    whole timeout (tensorflow/python/distribute/collective_util.py:101 in TF 2.21), thousands at GPU
    step rates. A dead peer is found without it by the coordination service's heartbeats.
    """
    implementations = tf.distribute.experimental.CommunicationImplementation
    implementation = implementations.NCCL if gpus else implementations.RING
    return tf.distribute.experimental.CommunicationOptions(
        implementation=implementation, timeout_seconds=collective_timeout_seconds or None
    )


def _multi_worker(cluster, peer_timeout_seconds, collective_timeout_seconds, stop_requested):
    if cluster is None:
        raise ConfigError("--strategy=multi_worker needs TF_CONFIG or an Indexed Job environment")
    wait_for_peers(cluster.workers, peer_timeout_seconds, stop_requested=stop_requested)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster.spec, task_type=cluster.task_type, task_id=cluster.task_index, rpc_layer="grpc"
    )
    gpus = tf.config.list_physical_devices("GPU")
    options = communication_options(gpus, collective_timeout_seconds)
    logging.info(
        "all-reduce between workers: %s (%d GPU(s) on this worker)", options.implementation.name, len(gpus)
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(resolver, communication_options=options)
    except FORMATION_ERRORS as exc:  # a peer went away while the workers were connecting
        raise TransientError(
            f"the workers could not form their cluster ({type(exc).__name__}: {first_line(exc.message)}); "
            "a restart of every worker tries again"
        ) from None
