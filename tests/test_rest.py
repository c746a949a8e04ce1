"""The TF Serving REST contract, without a server.

The client's request JSON is decoded the way TF Serving's REST API does (row format, `{"b64"}` ->
bytes, instances stacked on axis 0), run through the exported SavedModel's signature, encoded the
way TF Serving answers (`_bytes` outputs -> `{"b64"}`, single output -> bare values), and parsed
back by the client. Shapes follow tensorflow_serving/g3doc/api_rest.md and util/json_tensor.cc.
"""

import base64
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer.serve import archive, client, rest


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def saved_model(tiny_export):
    return tiny_export


@pytest.fixture(scope="module")
def local(saved_model):
    return rest.LocalModel(saved_model, "colorizer")


def test_request_is_the_documented_row_format():
    body = rest.predict_request([b"\x89PNG one", b"two"])
    assert body == {
        "instances": [
            {"image_bytes": {"b64": base64.b64encode(b"\x89PNG one").decode()}},
            {"image_bytes": {"b64": "dHdv"}},
        ]
    }
    assert rest.predict_request([b"x"], signature_name="s")["signature_name"] == "s"


def test_decode_stacks_instances_and_decodes_b64():
    specs = {"image_bytes": object}
    named = rest.decode_instances(
        {"instances": [{"image_bytes": {"b64": "YQ=="}}, {"image_bytes": {"b64": "Yg=="}}]}, specs
    )
    bare = rest.decode_instances(
        {"instances": [{"b64": "YQ=="}, {"b64": "Yg=="}]}, specs
    )  # single input: no name
    assert named["image_bytes"].tolist() == bare["image_bytes"].tolist() == [b"a", b"b"]
    floats = rest.decode_instances({"instances": [[[0.5], [1.0]], [[0.0], [0.25]]]}, {"gray": np.float32})
    assert floats["gray"].shape == (2, 2, 1) and floats["gray"].dtype == np.float32


@pytest.mark.parametrize(
    "body, message",
    [
        ({"instances": []}, "empty"),
        ({"instances": [{"wrong": {"b64": "YQ=="}}]}, "keys must be equal to: image_bytes"),
        ({"instances": [{"image_bytes": {"b64": "YQ==", "x": 1}}]}, "not formatted correctly for base64"),
        ([1, 2], "Is not object"),
        ({"instances": "x"}, "Expecting 'instances' to be a list"),
        ({"instances": [3]}, "JSON Value: 3 Type: Number is not of expected type: string"),
        ({"instances": [{"b64": "!!"}]}, "is not valid base64 data"),
    ],
)
def test_decode_refuses_what_tf_serving_refuses(body, message):
    with pytest.raises(rest.RestError, match=message) as caught:
        rest.decode_instances(body, {"image_bytes": object})
    assert caught.value.status == 400


def test_single_output_omits_the_name_and_bytes_become_b64():
    body = rest.encode_predictions({"colorized_bytes": np.array([b"p1", b"p2"], dtype=object)})
    assert body == {"predictions": [{"b64": "cDE="}, {"b64": "cDI="}]}
    assert rest.parse_predictions(body, 2) == [b"p1", b"p2"]


def test_several_outputs_are_objects_and_only_bytes_suffix_is_b64():
    body = rest.encode_predictions(
        {
            "colorized_bytes": np.array([b"p"], dtype=object),
            "label": np.array([b"text"], dtype=object),
            "score": np.array([[0.5, 1.0]]),
        }
    )
    assert body == {
        "predictions": [{"colorized_bytes": {"b64": "cA=="}, "label": "text", "score": [0.5, 1.0]}]
    }
    assert rest.parse_predictions(body, 1) == [b"p"]


def test_parse_reads_the_documented_example_and_checks_the_count():
    assert rest.parse_predictions({"predictions": [3.5, 4.0, 5.5]}, 3) == [3.5, 4.0, 5.5]
    with pytest.raises(rest.RestError, match="3 entries"):
        rest.parse_predictions({"predictions": [3.5]}, 3)


def test_contract_client_request_to_signature_to_client(saved_model):
    """Each step spelled out: JSON text in, the SavedModel's signature, JSON text out."""
    images = [
        _encode(np.full((150, 200), 90, np.uint8), "JPEG"),
        _encode(np.zeros((30, 40, 4), np.uint8), "PNG"),
    ]
    request_text = json.dumps(rest.predict_request(images))
    signature = tf.saved_model.load(saved_model).signatures["serving_default"]
    specs = {
        name: spec.dtype.as_numpy_dtype for name, spec in signature.structured_input_signature[1].items()
    }
    inputs = rest.decode_instances(json.loads(request_text), specs)
    outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
    response_text = json.dumps(rest.encode_predictions({k: v.numpy() for k, v in outputs.items()}))
    assert list(json.loads(response_text)["predictions"][0]) == ["b64"]  # one named output: name omitted
    pngs = rest.parse_predictions(json.loads(response_text), len(images))
    assert [tf.io.decode_png(p).shape for p in pngs] == [(150, 200, 3), (30, 40, 3)]


def test_client_through_local_model(local):
    """The client's own code path (status check, predict, parse) against the local stand-in."""
    serving = client.Client(local, "colorizer")
    assert serving.wait_available() == local.version
    gray = _encode(np.tile(np.arange(200, dtype=np.uint8), (150, 1)), "JPEG")
    (png,) = serving.predict([gray])
    assert tf.io.decode_png(png).shape == (150, 200, 3)


def test_tensor_signature_over_rest(local):
    body = {"signature_name": "colorize_tensor", "instances": [np.full((120, 120, 1), 0.5).tolist()]}
    status, answer = local.request("POST", "/v1/models/colorizer:predict", json.dumps(body).encode())
    (rgb,) = json.loads(answer)["predictions"]
    assert status == 200 and np.asarray(rgb).shape == (120, 120, 3)


def test_bad_image_is_http_400_with_one_line_error(local):
    serving = client.Client(local, "colorizer", retries=0)
    with pytest.raises(client.ServingError) as caught:
        serving.predict([b"not an image"])
    # The header check (trainer/serve/image_limits.py) refuses a non-image before TensorFlow decodes it.
    assert str(caught.value).startswith(
        "HTTP 400: assertion failed: [unsupported image format"
    ) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/v1/models/other", 404),
        ("POST", "/v1/models/other:predict", 404),
        ("GET", "/v1/models/colorizer/versions/1", 404),
        ("POST", "/v1/models/colorizer:predict", 400),
    ],
)
def test_local_model_status_codes(local, method, path, status):
    code, body = local.request(method, path, b"{not json" if method == "POST" else None)
    assert code == status and "error" in json.loads(body)


def test_local_model_status_is_available(local):
    code, body = local.request("GET", f"/v1/models/colorizer/versions/{local.version}")
    assert code == 200
    assert json.loads(body)["model_version_status"][0] == {
        "version": local.version,
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


def test_unknown_signature_is_400(local):
    body = json.dumps({"signature_name": "nope", "instances": [1]}).encode()
    code, answer = local.request("POST", "/v1/models/colorizer:predict", body)
    assert code == 400 and "nope" in json.loads(answer)["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[]", "JSON Value: [] Is not object"),
        (b'"x"', 'JSON Value: "x" Is not object'),
        (b"3", "JSON Value: 3 Is not object"),
        (b"null", "JSON Value: null Is not object"),
        (b"", "JSON Parse error: "),
        (b"\xff\xfe{", "JSON Parse error: "),
        (b"[" * 100_000, "JSON Parse error: "),  # deeper than the parser's recursion limit
        (b'{"instances": "x"}', "Expecting 'instances' to be a list"),
        (b'{"instances": {"image_bytes": {"b64": "YQ=="}}}', "Expecting 'instances' to be a list"),
        (b'{"inputs": 3}', "row format ('instances') only"),
        (b'{"instances": [3]}', "Type: Number is not of expected type: string"),
        (b'{"instances": [null]}', "Type: Null is not of expected type: string"),
        (b'{"instances": [{"b64": "!!"}]}', "is not valid base64 data"),
        (b'{"signature_name": [], "instances": [1]}', "Expecting 'signature_name' to be a string"),
        (b'{"signature_name": {}, "instances": [1]}', "Expecting 'signature_name' to be a string"),
        (
            b'{"signature_name": "colorize_tensor", "instances": [[[[null]]]]}',
            "Type: Null is not of expected type: number",
        ),
        (
            b'{"signature_name": "colorize_tensor", "instances": ["gray"]}',
            'JSON Value: "gray" Type: String is not of expected type: number',
        ),
    ],
)
def test_hostile_bodies_are_a_one_line_400(local, body, message):
    """Whatever the body, the stand-in answers like TF Serving: HTTP 400 and `{"error": one line}`."""
    code, answer = local.request("POST", "/v1/models/colorizer:predict", body)
    error = json.loads(answer)
    assert code == 400 and list(error) == ["error"], answer
    assert message in error["error"] and "\n" not in error["error"]


def test_a_gif_reaches_serving_as_a_png_of_its_first_frame(local, tmp_path):
    """serving_default refuses GIF; the client sends the first frame as PNG, which it colorizes."""
    frames = [Image.fromarray(np.full((30, 40), value, np.uint8)) for value in (60, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    (tmp_path / "anim.gif").write_bytes(buffer.getvalue())
    body = json.dumps(rest.predict_request([buffer.getvalue()])).encode()
    code, answer = local.request("POST", "/v1/models/colorizer:predict", body)
    assert code == 400 and "GIF is not accepted" in json.loads(answer)["error"]
    serving = client.Client(local, "colorizer", retries=0)
    photos, _ = archive.list_photos([str(tmp_path / "anim.gif")])
    archive.colorize_archive(serving.predict, photos, str(tmp_path / "out"), 8)
    assert tf.io.decode_png((tmp_path / "out" / "anim.png").read_bytes()).shape == (30, 40, 3)
