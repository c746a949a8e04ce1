"""TF Serving's warmup file: our vendored protos are TF Serving's, and every record runs in both TensorFlows.

A warmup record that fails makes TF Serving fail the whole version load, so each one is replayed
here through tf.saved_model.load (TF 2.21, the trainer's) and through the serving image's TF1
session loader (tests/test_serving_runtime.py).
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from tests.test_serving_runtime import assert_same_pngs, run_in_serving_runtime
from trainer.serve import export, serving_protos, warmup
from trainer.serve.image_limits import header_dimensions
from trainer.serve.limits import DEFAULT_MAX_PIXELS
from trainer.train.models import build_model

OFFICIAL = {
    "PredictionLog": prediction_log_pb2.PredictionLog,
    "ModelServerConfig": model_server_config_pb2.ModelServerConfig,
}


def official_descriptor(path: str):
    """The tensorflow-serving-api descriptor of `package.Path.To.Message`, found from its file's pool."""
    pool = prediction_log_pb2.DESCRIPTOR.pool
    model_server_config_pb2.DESCRIPTOR  # noqa: B018  (imported: its file is in the pool)
    return pool.FindMessageTypeByName(f"{serving_protos.PACKAGE}.{path}")


@pytest.mark.parametrize("path", sorted(serving_protos.MESSAGES))
def test_vendored_messages_are_tf_serving_s(path):
    """Every vendored field has the official name, number, type, repetition and message type."""
    ours = serving_protos.CLASSES.get(path)
    ours = (
        ours.DESCRIPTOR if ours else official_descriptor(path)
    )  # map entries: checked through their parents
    theirs = official_descriptor(path)
    for field in ours.fields:
        official = theirs.fields_by_name[field.name]
        assert (field.number, field.type, field.is_repeated) == (
            official.number,
            official.type,
            official.is_repeated,
        ), field.name
        assert (field.message_type and field.message_type.full_name) == (
            official.message_type and official.message_type.full_name
        ), field.name


def records(saved_model: str) -> list:
    """The warmup file's records, parsed with tensorflow-serving-api's own PredictionLog."""
    logs = []
    for raw in tf.data.TFRecordDataset(f"{saved_model}/{warmup.WARMUP_FILE}").as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw)
        assert log.WhichOneof("log_type") == "predict_log"
        logs.append(log.predict_log.request)
    return logs


def as_arrays(request) -> dict:
    return {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}


@pytest.fixture(scope="module")
def exported(tiny_export):
    return tiny_export, tf.saved_model.load(tiny_export)


def test_every_export_carries_realistic_warmup_requests(exported):
    path, _ = exported
    requests = records(path)
    assert 1 <= len(requests) <= 1000  # saved_model_warmup_util.h kMaxNumRecords
    signatures = [r.model_spec.signature_name for r in requests]
    assert signatures == ["serving_default", "serving_default", "colorize_tensor"]
    sizes = [int(np.prod(header_dimensions(as_arrays(r)["image_bytes"][0]).numpy())) for r in requests[:2]]
    assert sizes[0] < 100_000 < sizes[1] <= DEFAULT_MAX_PIXELS, "a small and a large photo"
    assert as_arrays(requests[2])["gray"].shape == (warmup.TENSOR_BATCH, 120, 120, 1)


@pytest.mark.system
def test_each_warmup_request_runs_in_the_trainer_s_and_the_serving_image_s_tensorflow(exported, tmp_path):
    path, loaded = exported
    cases = {f"r{i}": (r.model_spec.signature_name, as_arrays(r)) for i, r in enumerate(records(path))}
    served = run_in_serving_runtime(path, cases, tmp_path)
    for case, (signature, inputs) in cases.items():
        outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        for name, value in outputs.items():
            if name.endswith("_bytes"):
                assert_same_pngs(served[f"{case}/{name}"], value.numpy())
            else:
                np.testing.assert_allclose(served[f"{case}/{name}"], value.numpy(), atol=1e-5)


def test_the_large_warmup_photo_fits_a_lower_pixel_limit(tmp_path):
    """With --max_pixels below the photo's size, the photo shrinks: the export would refuse it, failing
    the load."""
    model = build_model("unet", 2, base_filters=4)
    path = export.export_saved_model(model, "lab", str(tmp_path), max_pixels=200_000)
    large = as_arrays(records(path)[1])["image_bytes"]
    assert 150_000 < np.prod(header_dimensions(large[0]).numpy()) <= 200_000
    tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant(list(large)))
