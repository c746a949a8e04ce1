"""Preemption: a SIGTERM to any one worker makes every worker save at the same step and exit 143.

Kubernetes sends SIGTERM, then SIGKILL when the pod's grace period ends (15-30 s on Spot VMs).
The loop runs its steps in calls sized to take about 2 s; between calls the workers all-reduce a
stop vote together with the size of the next call, so all of them stop at the same step (saving
takes every worker) a few seconds after the signal, and all run the same sequence of collectives.

Why the SIGTERM handler is installed again once the strategy exists: MultiWorkerMirroredStrategy
turns on TF's coordination service (tensorflow/python/distribute/collective_all_reduce_strategy.py
:562 and :598 in TF 2.21), whose start, EagerContextDistributedManager::EnableCollectiveOps in
tensorflow/core/common_runtime/eager/context_distributed_manager.cc, creates a "sigterm"
PreemptionNotifier; its constructor calls std::signal(SIGTERM, ...)
(third_party/xla/xla/tsl/distributed_runtime/preemption/preemption_notifier.cc:69). That replaces
the C-level handler of Python's signal module, so a handler set earlier never runs again: SIGTERM
was silently swallowed. TF's own PreemptionCheckpointHandler does the same as we do, calling
signal.signal after the strategy exists (tensorflow/python/distribute/failure_handling/
failure_handling.py:675). We don't use that handler: it wants one step per call, its own
checkpoint managers and its own exit, while this loop runs many steps per call and already agrees
on a stop step. A SIGTERM that TF's handler caught while the cluster was forming is not lost: TF
records it in the coordination service under TF_DEFAULT_PREEMPTION_NOTICE_KEY, which `requested`
reads at every poll. Its notifier thread looks for the signal once a second, so the notice can
appear a second after our handler is back: one read at that moment would miss it.
"""

import os
import signal
import sys
import threading

import tensorflow as tf
from absl import logging

SECONDS_PER_CALL = 2.0  # long enough to amortise Python overhead, short next to a grace period
MAX_STEPS_PER_CALL = 200
TF_PREEMPTION_KEY = "TF_DEFAULT_PREEMPTION_NOTICE_KEY"
_KEPT = []  # see keep_until_exit


class SigtermWatch:
    """Records that this process got SIGTERM; `requested` is what the Trainer polls."""

    def __init__(self):
        self._event = threading.Event()
        self._read_tf_notice = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        # Only set a flag: a log line here could re-enter a write the main thread was in the middle
        # of (a second SIGTERM during the save must not break it). The vote logs the stop.
        self._event.set()

    def requested(self) -> bool:
        if not self._event.is_set() and self._read_tf_notice and _tf_saw_sigterm():
            logging.warning("a worker got SIGTERM while the cluster was forming: stopping")
            self._event.set()
        return self._event.is_set()

    def reinstall(self, strategy: tf.distribute.Strategy) -> None:
        """Takes SIGTERM back from TF's coordination service once `strategy` exists (module docstring)."""
        self.install()
        self._read_tf_notice = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def keep_until_exit(*objects) -> None:
    """Keeps `objects` (tf.data iterators) alive until exit_now, once a stop is agreed.

    Destroying an iterator waits for its threads to wind down (10-45 s with two workers on two
    shared cores), which a preempted pod doesn't have. Freed when a function returns, they would
    delay save and exit.
    """
    _KEPT.extend(objects)


def exit_now(code: int) -> None:
    """Exits with `code` at once, skipping Python's and TF's teardown; for after the stop's save.

    The teardown would destroy the iterators keep_until_exit holds, and Python resets our SIGTERM
    handler first, so a second SIGTERM then killed the process (-15 instead of 143). Nothing is
    lost: the checkpoint was written and closed before, summaries are flushed every epoch, and
    logs are flushed here.
    """
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _tf_saw_sigterm() -> bool:
    """Whether TF's notifier recorded a SIGTERM of any worker (the key exists; 1 ms timeout)."""
    from tensorflow.python.eager import context  # no public API reads the coordination service's store

    try:
        context.context().get_config_key_value(TF_PREEMPTION_KEY, 1)
        return True
    except tf.errors.OpError:
        return False


class Pacer:
    """Sizes the loop's calls and holds the stop vote between them, the same on every worker.

    Sizes from each worker's own timings could differ, and then one worker would vote while
    another still runs steps: a deadlock. So workers propose sizes and take the agreed mean.
    """

    def __init__(self, strategy: tf.distribute.Strategy, num_workers: int, stop_requested=lambda: False):
        self._strategy, self._num_workers, self._stop_requested = strategy, num_workers, stop_requested
        self.steps_per_call, self._proposal, self._timed_calls = 1, 1, 0

    def timed(self, steps: int, seconds: float) -> None:
        """Proposes a size for later calls from one call's time; the first includes tracing: skipped."""
        self._timed_calls += 1
        if self._timed_calls > 1:
            self._proposal = int(
                min(MAX_STEPS_PER_CALL, max(1, SECONDS_PER_CALL * steps / max(seconds, 1e-6)))
            )

    def stop_agreed(self) -> bool:
        """Before each call: True when any worker was asked to stop. Also fixes steps_per_call."""
        local = self._stop_requested()
        votes = int(local)
        if self._num_workers == 1:
            self.steps_per_call = self._proposal
        else:
            values = self._strategy.run(lambda: tf.constant([float(local), float(self._proposal)]))
            total = self._strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy()
            replicas = self._strategy.num_replicas_in_sync  # every worker counts once per local replica
            self.steps_per_call = max(1, int(round(total[1])) // replicas)
            votes = round(float(total[0]) * self._num_workers / replicas)
        if votes:
            logging.warning(
                "stop agreed: %d of %d worker(s) asked to stop after a SIGTERM%s; saving a checkpoint",
                votes,
                self._num_workers,
                " (this one too)" if local and self._num_workers > 1 else "",
            )
        return votes > 0
