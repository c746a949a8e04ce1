"""Runs a SavedModel's signatures the way TF Serving's C++ SavedModelBundle does, in another TensorFlow.

    <python of the serving image's TensorFlow> serving_runtime_runner.py SAVED_MODEL IN.npz OUT.npz

TF Serving loads a version with LoadSavedModel (a TF1 Session over the MetaGraph tagged "serve") and
runs a signature as Session::Run on the signature's tensor names, feeding the request's tensor as is.
tf.compat.v1's loader does the same from Python, and each case here goes through the C API's
TF_SessionRun directly: `Session.run` would first check the feed against the placeholder's shape,
which TF Serving does not, and so hide inputs that crash a kernel. A crash ends this process with a
signal, which the caller sees as a non-zero exit.

IN.npz holds `<case>/<signature>/<input>` arrays. OUT.npz gets `<case>/<output>` arrays, or
`<case>/error` ("<error class>: <message>") for a refused case, `<case>/seconds`, and
`tensorflow_version`. Cases run in file order; the first one warms the session (as TF Serving's
warmup requests do), and `rss_growth_bytes` is the peak RSS growth over all the others. Imports
only TensorFlow and numpy, so it runs in a bare `pip install tensorflow-cpu==X` environment
(tests/test_serving_runtime.py).
"""

import sys
import time

import numpy as np
import tensorflow as tf


def peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak into it
    across exec, so a child of a large pytest worker would report the worker's peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def _session_run(session, graph, signature_def, inputs: dict) -> dict:
    """One TF_SessionRun of a signature, with no Python-side check of the fed shapes."""
    outputs = sorted(signature_def.outputs.items())
    feeds = {
        graph.get_tensor_by_name(signature_def.inputs[name].name)._as_tf_output(): value
        for name, value in inputs.items()
    }
    fetches = [graph.get_tensor_by_name(info.name)._as_tf_output() for _, info in outputs]
    values = session._call_tf_sessionrun(None, feeds, fetches, [], None)
    return {name: value for (name, _), value in zip(outputs, values)}


def run(saved_model: str, inputs_path: str, outputs_path: str) -> None:
    feeds = np.load(inputs_path, allow_pickle=True)  # written by our own test, object arrays hold bytes
    cases = {}
    for key in feeds.files:
        case, signature, name = key.split("/")
        cases.setdefault((case, signature), {})[name] = feeds[key]
    results = {"tensorflow_version": np.array(tf.__version__)}
    with tf.Graph().as_default() as graph, tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], saved_model)
        baseline = None
        for (case, signature), inputs in cases.items():
            start = time.perf_counter()
            try:
                outputs = _session_run(session, graph, meta_graph.signature_def[signature], inputs)
                results.update({f"{case}/{name}": value for name, value in outputs.items()})
            except tf.errors.OpError as exc:
                results[f"{case}/error"] = np.array(f"{type(exc).__name__}: {exc.message}")
            results[f"{case}/seconds"] = np.array(time.perf_counter() - start)
            baseline = peak_rss_bytes() if baseline is None else baseline
        results["rss_growth_bytes"] = np.array(peak_rss_bytes() - baseline)
    np.savez(outputs_path, **results)


if __name__ == "__main__":
    run(*sys.argv[1:])
