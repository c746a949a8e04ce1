"""TF Serving's REST predict protocol: what the client sends, and a local stand-in for the server.

Follows the TensorFlow Serving RESTful API documentation
(https://www.tensorflow.org/tfx/serving/api_rest, source tensorflow_serving/g3doc/api_rest.md) and
its implementation tensorflow_serving/util/json_tensor.cc (FillTensorMapFromInstancesList,
MakeRowFormatJsonFromTensors) and model_servers/http_server.cc (ToHTTPStatusCode):
  * row format: `{"signature_name": optional, "instances": [...]}`; each instance is an object keyed
    by input name (or, for a single input, the bare value); instances are stacked on axis 0;
  * binary strings travel as `{"b64": <base64>}` in requests, and in responses for string outputs
    whose name ends in `_bytes`;
  * response: `{"predictions": [...]}`, one entry per instance: with ONE named output the name is
    omitted and each entry is that output's value; with several, each entry is an object by name;
  * errors: `{"error": <message>}` with the HTTP status of the TF status code (InvalidArgument 400,
    NotFound 404, ResourceExhausted 429, Unavailable 503, DeadlineExceeded 504, others 500);
  * `GET /v1/models/NAME[/versions/N]` answers a GetModelStatusResponse:
    `{"model_version_status": [{"version": "N", "state": "AVAILABLE", "status": {...}}]}`.

`LocalModel` answers the same URLs and JSON for a SavedModel on disk, so `trainer.client` runs one
code path against a server or a local export, and tests check the contract without a server.
"""

import base64
import json
import os
import re

import numpy as np

from trainer.errors import first_line

DEFAULT_INPUT = "image_bytes"
DEFAULT_OUTPUT = "colorized_bytes"
BYTES_SUFFIX = "_bytes"
_PATH_RE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:predict)?$")
_HTTP_STATUS = {
    "InvalidArgumentError": 400,
    "NotFoundError": 404,
    "ResourceExhaustedError": 429,
    "UnavailableError": 503,
    "DeadlineExceededError": 504,
    "FailedPreconditionError": 400,
    "OutOfRangeError": 400,
}


class RestError(Exception):
    """A request TF Serving would refuse: carries the HTTP status and the `error` message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def model_path(model_name: str, version=None) -> str:
    """`/v1/models/NAME[/versions/N]`: the status URL; add `:predict` for predictions."""
    return f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")


def predict_request(images, input_name: str = DEFAULT_INPUT, signature_name=None) -> dict:
    """Encoded image files -> `{"instances": [{input_name: {"b64": ...}}, ...]}`."""
    body = {"instances": [{input_name: {"b64": base64.b64encode(data).decode("ascii")}} for data in images]}
    if signature_name:
        body["signature_name"] = signature_name
    return body


def parse_predictions(body: dict, count: int, output_name: str = DEFAULT_OUTPUT) -> list:
    """A row-format response -> one value per instance; `{"b64": ...}` values become bytes.

    Accepts the single-output shape (bare values) and the multi-output shape (objects by name).
    Raises RestError(200, ...) when the body is not what a predict call of `count` instances returns.
    """
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or len(predictions) != count:
        raise RestError(200, f"expected 'predictions' with {count} entries, got {str(body)[:200]}")
    values = []
    for entry in predictions:
        if isinstance(entry, dict) and not _is_b64(entry):
            if output_name not in entry:
                raise RestError(
                    200, f"prediction has no output {output_name!r} (outputs: {', '.join(entry)})"
                )
            entry = entry[output_name]
        values.append(base64.b64decode(entry["b64"]) if _is_b64(entry) else entry)
    return values


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_value(value, is_string: bool):
    """One JSON leaf or nested list -> Python values; `{"b64"}` objects only for string inputs.

    A leaf of the wrong JSON type (a number or null for a string input, a string or null for a
    numeric one) is refused here, as TF Serving does, rather than left to the tensor conversion.
    """
    if isinstance(value, list):
        return [_decode_value(v, is_string) for v in value]
    if _is_b64(value):
        if not is_string:
            raise RestError(400, f"JSON Value: {json.dumps(value)} Type: Object is not of expected type")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise RestError(400, f"JSON Value: {json.dumps(value)[:100]} is not valid base64 data") from None
    if isinstance(value, dict):
        raise RestError(400, f"JSON Value: {json.dumps(value)[:100]} not formatted correctly for base64 data")
    if isinstance(value, str) != is_string or value is None:
        raise RestError(
            400,
            f"JSON Value: {json.dumps(value)[:100]} Type: {_json_type(value)} is not of expected type: "
            + ("string" if is_string else "number"),
        )
    return value


def _json_type(value) -> str:
    """RapidJSON's name of a JSON value's type, which TF Serving's messages use."""
    if value is None or isinstance(value, bool):
        return {None: "Null", True: "True", False: "False"}[value]
    return "String" if isinstance(value, str) else "Number"


def decode_instances(body: dict, input_specs: dict) -> dict:
    """Row-format request -> {input name: numpy array stacked on axis 0}, as TF Serving batches it.

    `input_specs` maps each input name to its numpy dtype (`object` for tf.string).
    """
    if not isinstance(body, dict):
        raise RestError(400, "JSON Value: request body Is not object")
    if "inputs" in body:
        raise RestError(400, "this stand-in implements the row format ('instances') only")
    instances = body.get("instances")
    if instances is not None and not isinstance(instances, list):
        raise RestError(400, f"JSON Value: {json.dumps(instances)[:100]} Expecting 'instances' to be a list")
    if not instances:
        raise RestError(400, "Missing or empty 'instances' list")
    columns: dict = {name: [] for name in input_specs}
    for index, instance in enumerate(instances):
        if not (isinstance(instance, dict) and not _is_b64(instance)):
            if len(input_specs) > 1:
                raise RestError(400, "instances is a plain list, but expecting list of objects")
            instance = {next(iter(input_specs)): instance}
        if set(instance) != set(input_specs):
            raise RestError(
                400,
                f"Failed to process element: {index} of 'instances' list. "
                f"keys must be equal to: {','.join(sorted(input_specs))}",
            )
        for name, value in instance.items():
            columns[name].append(_decode_value(value, input_specs[name] is object))
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = np.array(values, dtype=input_specs[name])
        except (ValueError, TypeError) as exc:
            raise RestError(400, f"input {name}: ragged or mistyped instances ({exc})") from None
    return arrays


def parse_request(body: bytes | None) -> dict:
    """A predict request's JSON object; RestError 400 for invalid JSON or a body that isn't an object."""
    try:
        value = json.loads(body or b"")
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser allows
        raise RestError(400, f"JSON Parse error: {first_line(exc)}") from None
    if not isinstance(value, dict):
        raise RestError(400, f"JSON Value: {json.dumps(value)[:100]} Is not object")
    return value


def encode_predictions(outputs: dict) -> dict:
    """{output name: array [N, ...]} -> `{"predictions": [...]}` in TF Serving's row format.

    Floats are written as Python floats of the float32 values (TF Serving prints the shortest
    float32 repr); both parse back to the same float32.
    """
    sizes = {len(value) for value in outputs.values()}
    if len(sizes) != 1:
        raise RestError(500, f"outputs have inconsistent batch sizes {sorted(sizes)}")
    columns = {
        name: [_encode_value(v, name.endswith(BYTES_SUFFIX)) for v in np.asarray(value)]
        for name, value in outputs.items()
    }
    rows = [dict(zip(columns, row)) for row in zip(*columns.values())]
    if len(outputs) == 1:
        rows = [next(iter(row.values())) for row in rows]
    return {"predictions": rows}


def _encode_value(value, as_bytes: bool):
    if isinstance(value, np.ndarray):
        return [_encode_value(v, as_bytes) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, bytes):
        return (
            {"b64": base64.b64encode(value).decode("ascii")} if as_bytes else value.decode("utf-8", "replace")
        )
    return value.item() if isinstance(value, np.generic) else value


def error_message(body: bytes, status: int) -> str:
    """The first line of a TF Serving `{"error": ...}` body (its messages carry graph-node lines)."""
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip() or "no response body"
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return f"HTTP {status}: {(lines[0] if lines else 'empty error')[:300]}"


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _op_message(message: str) -> str:
    """Drops the Python wrapper ("Graph execution error: ... Detected at node ...") that eager calls
    add, leaving the op's own message and node line, which is what TF Serving returns."""
    lines = message.splitlines()
    for index, line in enumerate(lines[1:], start=1):
        if line.lstrip().startswith("[["):
            return "\n".join(lines[index - 1 :])
    return message


class LocalModel:
    """Answers TF Serving's status and predict requests from a SavedModel folder, in-process.

    `request(method, path, body)` returns (HTTP status, JSON body bytes) exactly as the HTTP
    transport of `trainer.client` does, so the client cannot tell the two apart.
    """

    def __init__(self, saved_model: str, model_name: str):
        import tensorflow as tf  # only here: the HTTP client must start without TensorFlow

        self._tf = tf
        self.model_name = model_name
        self.version = os.path.basename(os.path.normpath(saved_model))
        self.version = self.version if self.version.isdigit() else "1"
        self._loaded = tf.saved_model.load(saved_model)

    def request(self, method: str, path: str, body: bytes | None = None):
        """(HTTP status, JSON body); every refusal is an `{"error": ...}` body, never an exception."""
        try:
            return 200, json.dumps(self._answer(method, path, body)).encode()
        except RestError as exc:
            return exc.status, _error_body(str(exc))
        except self._tf.errors.OpError as exc:
            return _HTTP_STATUS.get(type(exc).__name__, 500), _error_body(_op_message(exc.message))
        except (ValueError, TypeError, RecursionError) as exc:
            # What converting decoded instances to the signature's tensors raises for mistyped or
            # absurdly nested ones: the request's fault, as TF Serving's InvalidArgument is.
            return 400, _error_body(f"{type(exc).__name__}: {first_line(exc)}")

    def _answer(self, method: str, path: str, body: bytes | None) -> dict:
        match = _PATH_RE.match(path)
        if not match or match["name"] != self.model_name or match["version"] not in (None, self.version):
            raise RestError(404, f"Servable not found for request: {path}")
        if match["verb"] and method == "POST":
            return self._predict(parse_request(body))
        if not match["verb"] and method == "GET":
            status = {
                "version": self.version,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            return {"model_version_status": [status]}
        raise RestError(404, f"no handler for {method} {path}")

    def _predict(self, body: dict) -> dict:
        name = body.get("signature_name", "serving_default")
        if not isinstance(name, str):
            raise RestError(
                400, f"JSON Value: {json.dumps(name)[:100]} Expecting 'signature_name' to be a string"
            )
        name = name or "serving_default"
        if name not in self._loaded.signatures:
            raise RestError(400, f'Serving signature name: "{name}" not found in signature def')
        signature = self._loaded.signatures[name]
        specs = {k: s.dtype.as_numpy_dtype for k, s in signature.structured_input_signature[1].items()}
        inputs = decode_instances(body, specs)
        outputs = signature(**{k: self._tf.constant(v) for k, v in inputs.items()})
        return encode_predictions({k: v.numpy() for k, v in outputs.items()})
