import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import REPO
from trainer.serve import export, preprocess
from trainer.serve.limits import DEFAULT_MAX_PIXELS
from trainer.train.models import build_model


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["lab", "rgb"])
def exported(request, tmp_path_factory):
    color_space = request.param
    model = build_model("unet", preprocess.output_channels(color_space), base_filters=4)
    path = export.export_saved_model(
        model, color_space, str(tmp_path_factory.mktemp("export")), {"model": "unet"}
    )
    return model, color_space, path, tf.saved_model.load(path)


def test_layout_is_an_integer_version_with_metadata(exported):
    _, color_space, path, _ = exported
    assert os.path.basename(path).isdigit()
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path)]
    metadata = json.load(open(os.path.join(path, export.METADATA_FILE)))
    assert metadata["color_space"] == color_space and metadata["max_pixels"] == DEFAULT_MAX_PIXELS


def test_next_version_is_above_existing(tmp_path):
    (tmp_path / "99999999999").mkdir()
    assert export.next_version(str(tmp_path)) == 100000000000


def test_tensor_signature_matches_the_model(exported):
    model, color_space, _, loaded = exported
    gray = tf.random.uniform([3, 120, 120, 1], seed=1)
    served = loaded.signatures["colorize_tensor"](gray=gray)["rgb"]
    expected = preprocess.predictions_to_rgb(
        model(preprocess.model_inputs(gray), training=False), gray, color_space
    )
    assert served.shape == (3, 120, 120, 3)
    np.testing.assert_allclose(served.numpy(), expected.numpy(), atol=1e-5)


def test_bytes_signature_returns_png_at_original_size(exported):
    _, _, _, loaded = exported
    gray = (np.random.default_rng(0).uniform(0, 255, (150, 200))).astype(np.uint8)
    requests = [
        _encode(gray, "JPEG"),
        _encode(gray, "PNG"),
        _encode(np.dstack([gray] * 4), "PNG"),
        _encode(np.dstack([gray] * 3)[:90, :70], "BMP"),
    ]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(requests))["colorized_bytes"].numpy()
    shapes = [tf.io.decode_png(png).shape for png in out]
    assert shapes == [(150, 200, 3)] * 3 + [(90, 70, 3)]


def test_lab_output_keeps_full_resolution_structure(tiny_export):
    loaded = tf.saved_model.load(tiny_export)
    gray = np.tile((np.arange(400) % 2 * 255).astype(np.uint8), (300, 1))  # 1-pixel stripes
    png = loaded.signatures["serving_default"](image_bytes=tf.constant([_encode(gray, "PNG")]))[
        "colorized_bytes"
    ][0]
    rgb = tf.io.decode_png(png).numpy().astype(int)
    assert rgb.shape == (300, 400, 3)
    assert (
        np.abs(rgb[:, 1:] - rgb[:, :-1]).mean() > 100
    )  # stripes survive; a 120px round trip would blur them


@pytest.mark.parametrize("payload", [b"garbage", b"", "truncated"])
def test_bad_input_is_invalid_argument(exported, payload):
    _, _, _, loaded = exported
    if payload == "truncated":
        jpeg = _encode(np.zeros((64, 64, 3), np.uint8) + 100, "JPEG")
        payload = jpeg[: len(jpeg) // 2]
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](image_bytes=tf.constant([payload]))


def test_graph_uses_only_builtin_tensorflow_ops(exported):
    _, _, path, _ = exported
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(open(os.path.join(path, "saved_model.pb"), "rb").read())
    graph = saved.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert "DecodeImage" in ops and "EncodePng" in ops
    builtin = set(dir(tf.raw_ops)) | {f.signature.name for f in graph.library.function}
    assert ops <= builtin, ops - builtin


_HOSTILE_OVER_REST = """
import base64, json, sys, time
import numpy as np
from tests.hostile_requests import hostile_cases, warm_case
from tests.serving_runtime_runner import peak_rss_bytes
from trainer.serve import rest

def as_json(value):
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [as_json(v) for v in value]
    return {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value.tolist()

model = rest.LocalModel(sys.argv[1], "colorizer")
path = rest.model_path("colorizer") + ":predict"
cases = {**warm_case(), **hostile_cases(int(sys.argv[2]))}
for number, (case, (signature, inputs, expected)) in enumerate(cases.items()):
    if any(value.dtype.kind == "i" or value.ndim == 0 for value in inputs.values()):
        continue  # JSON numbers carry no dtype; the row format has no scalar batch
    (name, value), = inputs.items()
    body = json.dumps({"signature_name": signature, "instances": [{name: as_json(v)} for v in value]})
    start = time.perf_counter()
    status, answer = model.request("POST", path, body.encode())
    seconds = time.perf_counter() - start
    baseline = baseline if number else peak_rss_bytes()
    error = rest.error_message(answer, status) if status != 200 else ""
    print(json.dumps([case, status, error, expected, seconds, len(body)]))
print(json.dumps(peak_rss_bytes() - baseline))
"""


@pytest.mark.system
def test_hostile_requests_get_a_quick_one_line_400_and_cost_little(tiny_export):
    """Every case of tests/hostile_requests.py over REST (LocalModel) in a fresh process: HTTP 400 whose
    first line names the problem, within a second (plus parsing time for a large JSON body); the
    process's peak RSS grows by under 1 GB over all of them. Through TF_SessionRun in the serving
    image's TensorFlow: tests/test_serving_runtime.py."""
    run = subprocess.run(
        [sys.executable, "-c", _HOSTILE_OVER_REST, tiny_export, str(DEFAULT_MAX_PIXELS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    *answers, growth = [json.loads(line) for line in run.stdout.strip().splitlines()]
    warm, *hostile = answers
    assert warm[1] == 200, warm
    assert len(hostile) >= 15
    for case, status, error, expected, seconds, body_bytes in hostile:
        assert status == 400 and re.search(expected, error), (case, status, error)
        assert seconds < 1.0 + body_bytes / 1e6, (case, seconds, body_bytes)
    assert growth < 1e9, f"peak RSS grew by {growth / 1e9:.2f} GB"


def test_version_folders_are_understood_as_tf_serving_does(tmp_path):
    """All-digit names only, by number, their own names kept; a version is complete once saved_model.pb
    (written last) exists. export, run (one export per run) and the client's --local_model use these."""
    for name in ("7", "0012", "tmp-13", ".tmp-14-1"):
        (tmp_path / name).mkdir()
    (tmp_path / "7" / "saved_model.pb").write_bytes(b"")
    assert export.version_folders(str(tmp_path)) == [(12, str(tmp_path / "0012")), (7, str(tmp_path / "7"))]
    assert export.complete_versions(str(tmp_path)) == [str(tmp_path / "7")]
    assert export.next_version(str(tmp_path)) >= 13
    assert export.version_folders(str(tmp_path / "missing")) == []


def test_a_poll_during_an_upload_delays_the_version_by_one_load_retry(tmp_path, monkeypatch):
    """On gs://, TF Serving can list a version while it uploads (tests/controllers.py): saved_model.pb
    goes last, so such a load fails cleanly and the retry 60 s later loads the whole version."""
    from tests.controllers import tf_serving_upload_available_at

    (tmp_path / "variables").mkdir()
    for name in ("saved_model.pb", "fingerprint.pb", "variables/variables.index", "colorizer.json"):
        (tmp_path / name).write_bytes(b"x")
    uploaded = []
    monkeypatch.setattr(export, "_upload_verified", lambda path, target: uploaded.append(target))
    export._publish(str(tmp_path), "gs://bucket/export/7")
    assert uploaded[-1] == "gs://bucket/export/7/saved_model.pb" and len(uploaded) == 4

    serving = open(os.path.join(REPO, "k8s", "components", "serving", "serving.yaml")).read()
    poll = int(re.search(r"--file_system_poll_wait_seconds=(\d+)", serving).group(1))
    load = 10.0
    assert tf_serving_upload_available_at((1.0, 15.0), poll, load) == poll + load  # done before the poll
    assert tf_serving_upload_available_at((15.0, 25.0), poll, load) == poll + 60 + load  # a poll mid-upload
    assert tf_serving_upload_available_at((15.0, 400.0), poll, load) is None  # slower than 5 retries: failed
