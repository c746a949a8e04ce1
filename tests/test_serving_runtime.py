"""The export runs in the TensorFlow the pinned tensorflow/serving image is built on, as TF Serving runs it.

Exports are written by TF 2.21; the manifests pin tensorflow/serving:2.20.0 (no 2.21 server release
exists yet). A graph or op attribute that 2.20 can't load or run would only show on the cluster, as a
version stuck in "failed to load". So this test loads the export in a second virtualenv holding the
serving image's TensorFlow (COLORIZER_SERVING_PYTHON, made by .ci/run from the tag in k8s/), through
the TF1 session loader that TF Serving's SavedModelBundle uses, runs both signatures and compares the
answers with the training side's. Without that venv it skips, unless COLORIZER_REQUIRE_SERVING_RUNTIME=1
(CI) makes that a failure.
"""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, make_photo
from tests.hostile_requests import hostile_cases, warm_case
from trainer.serve import export, preprocess
from trainer.serve.limits import DEFAULT_MAX_PIXELS
from trainer.train.models import build_model

pytestmark = pytest.mark.system  # real processes, servers or a second TensorFlow (README: test tiers)

RUNNER = os.path.join(REPO, "tests", "serving_runtime_runner.py")
SERVING_YAML = os.path.join(REPO, "k8s", "components", "serving", "serving.yaml")
SETUP_HINT = (
    "python3 -m venv .venv-tf-serving && .venv-tf-serving/bin/pip install 'tensorflow-cpu==X.Y.*' "
    "(X.Y: the tensorflow/serving tag in k8s/components/serving/serving.yaml), then "
    "export COLORIZER_SERVING_PYTHON=$PWD/.venv-tf-serving/bin/python"
)


def serving_python() -> str:
    """The serving-side interpreter, or a skip (a failure in CI) saying how to make one."""
    python = os.environ.get("COLORIZER_SERVING_PYTHON")
    if python and os.access(python, os.X_OK):
        return python
    message = f"COLORIZER_SERVING_PYTHON is {python or 'unset'}: {SETUP_HINT}"
    if os.environ.get("COLORIZER_REQUIRE_SERVING_RUNTIME") == "1":
        pytest.fail(message)
    pytest.skip(message)


def pinned_serving_version() -> str:
    """X.Y of the tensorflow/serving image the manifests run."""
    with open(SERVING_YAML) as handle:
        return re.search(r"image: tensorflow/serving:(\d+\.\d+)\.\d+", handle.read()).group(1)


def run_in_serving_runtime(saved_model: str, cases: dict, tmp_path, refusals: bool = False) -> dict:
    """{case: (signature, {input: array})} -> {case/output: array} from the serving image's TensorFlow.

    Cases run in order through TF_SessionRun (tests/serving_runtime_runner.py). A refused case is
    `{case}/error` when `refusals`, else a failure. Fails when that TensorFlow is not the one the
    manifests pin (a stale venv would prove nothing).
    """
    python = serving_python()
    feeds = {
        f"{case}/{signature}/{name}": value
        for case, (signature, inputs) in cases.items()
        for name, value in inputs.items()
    }
    np.savez(tmp_path / "in.npz", **feeds)
    out = subprocess.run(
        [python, RUNNER, saved_model, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, f"the serving runtime could not load or run the export:\n{out.stderr[-3000:]}"
    results = dict(np.load(tmp_path / "out.npz", allow_pickle=True))
    runtime = str(results.pop("tensorflow_version"))
    assert runtime.startswith(pinned_serving_version() + "."), (
        f"{python} runs TensorFlow {runtime}, "
        f"the manifests pin tensorflow/serving:{pinned_serving_version()}: {SETUP_HINT}"
    )
    errors = {key: str(value) for key, value in results.items() if key.endswith("/error")}
    assert refusals or not errors, f"the serving runtime refused a request: {errors}"
    return results


def assert_same_pngs(served, expected):
    """PNG outputs decode to the same pixels, give or take one 8-bit step (float rounding across builds)."""
    assert len(served) == len(expected)
    for a, b in zip(served, expected):
        a, b = tf.io.decode_png(a).numpy().astype(int), tf.io.decode_png(b).numpy().astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1


@pytest.fixture(scope="module", params=["lab", "rgb"])
def exported(request, tmp_path_factory):
    """Untrained U-Nets of 4 base filters: lab is the session's `tiny_export`."""
    if request.param == "lab":
        path = request.getfixturevalue("tiny_export")
    else:
        model = build_model("unet", preprocess.output_channels("rgb"), base_filters=4)
        path = export.export_saved_model(model, "rgb", str(tmp_path_factory.mktemp("export")))
    return path, tf.saved_model.load(path)


def test_both_signatures_give_the_training_side_answers_in_the_serving_tensorflow(exported, tmp_path):
    path, loaded = exported
    images = np.array(
        [
            tf.io.encode_png(make_photo(1, (64, 48))).numpy(),
            tf.io.encode_jpeg(make_photo(2, (320, 200))).numpy(),
        ],
        dtype=object,
    )
    gray = np.random.default_rng(0).uniform(0, 1, (3, 120, 120, 1)).astype(np.float32)
    served = run_in_serving_runtime(
        path,
        {
            "bytes": ("serving_default", {"image_bytes": images}),
            "tensor": ("colorize_tensor", {"gray": gray}),
        },
        tmp_path,
    )
    expected_png = loaded.signatures["serving_default"](image_bytes=tf.constant(list(images)))[
        "colorized_bytes"
    ]
    assert_same_pngs(served["bytes/colorized_bytes"], expected_png.numpy())
    expected_rgb = loaded.signatures["colorize_tensor"](gray=tf.constant(gray))["rgb"].numpy()
    np.testing.assert_allclose(served["tensor/rgb"], expected_rgb, atol=1e-5)


def test_a_graph_the_serving_tensorflow_cannot_run_fails(tiny_export, tmp_path):
    """The check has teeth: an op unknown to the serving runtime makes the load fail, and the test with it."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = shutil.copytree(tiny_export, tmp_path / "export")
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as handle:
        saved.ParseFromString(handle.read())
    for node in (
        n for f in saved.meta_graphs[0].graph_def.library.function for n in f.node_def if n.op == "Conv2D"
    ):
        node.op = "Conv2DFromTheFuture"  # what a newer TensorFlow's new op looks like to an older one
    with open(os.path.join(path, "saved_model.pb"), "wb") as handle:
        handle.write(saved.SerializeToString())
    gray = np.zeros((1, 120, 120, 1), np.float32)
    with pytest.raises(AssertionError, match="could not load or run"):
        run_in_serving_runtime(path, {"tensor": ("colorize_tensor", {"gray": gray})}, tmp_path)


@pytest.mark.parametrize("exported", ["lab"], indirect=True)
def test_hostile_requests_are_refused_through_the_c_api_without_a_crash(exported, tmp_path):
    """TF Serving feeds a request's tensor to Session::Run unchecked: each hostile case must be an
    InvalidArgument (HTTP 400) naming the problem within a second, the process must survive them all
    (a oneDNN check failure aborts it), and its peak RSS grows by under 1 GB over all of them."""
    path, _ = exported
    cases = {**warm_case(), **hostile_cases(DEFAULT_MAX_PIXELS)}
    results = run_in_serving_runtime(
        path,
        {case: (signature, inputs) for case, (signature, inputs, _) in cases.items()},
        tmp_path,
        refusals=True,
    )
    assert "warm/error" not in results
    for case, (_, _, expected) in list(cases.items())[1:]:
        error = str(results.get(f"{case}/error", "answered"))
        assert error.startswith("InvalidArgumentError") and re.search(expected, error.splitlines()[0]), (
            case,
            error,
        )
        assert float(results[f"{case}/seconds"]) < 1.0, (case, float(results[f"{case}/seconds"]))
    assert int(results["rss_growth_bytes"]) < 1e9, int(results["rss_growth_bytes"])
