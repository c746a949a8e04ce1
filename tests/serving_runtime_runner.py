"""Runs a SavedModel's signatures the way TF Serving's C++ SavedModelBundle does, in another TensorFlow.

    <python of the serving image's TensorFlow> serving_runtime_runner.py SAVED_MODEL IN.npz OUT.npz

TF Serving loads a version with LoadSavedModel (a TF1 Session over the MetaGraph tagged "serve") and
runs a signature as Session::Run on the signature's tensor names; tf.compat.v1's loader does the same
from Python. IN.npz holds `<case>/<signature>/<input>` arrays; OUT.npz gets `<case>/<output>` arrays
and `tensorflow_version`. Imports only TensorFlow and numpy, so it runs in a bare `pip install
tensorflow-cpu==X` environment (tests/test_serving_runtime.py, .ci/run).
"""

import sys

import numpy as np
import tensorflow as tf


def run(saved_model: str, inputs_path: str, outputs_path: str) -> None:
    feeds = np.load(inputs_path, allow_pickle=True)  # written by our own test, object arrays hold bytes
    cases = {}
    for key in feeds.files:
        case, signature, name = key.split("/")
        cases.setdefault((case, signature), {})[name] = feeds[key]
    results = {"tensorflow_version": np.array(tf.__version__)}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], saved_model)
        for (case, signature), inputs in sorted(cases.items()):
            signature_def = meta_graph.signature_def[signature]
            fetches = {name: info.name for name, info in signature_def.outputs.items()}
            feed = {signature_def.inputs[name].name: value for name, value in inputs.items()}
            for name, value in session.run(fetches, feed).items():
                results[f"{case}/{name}"] = value
    np.savez(outputs_path, **results)


if __name__ == "__main__":
    run(*sys.argv[1:])
