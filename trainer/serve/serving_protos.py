"""The few TF Serving protocol buffers we write, built from their field numbers (protobuf's descriptor API).

TF Serving reads two files of ours: the warmup requests (a TFRecord of `tensorflow.serving.PredictionLog`)
and the model config (a text `tensorflow.serving.ModelServerConfig`). Their classes ship in
tensorflow-serving-api, whose wheel requires `tensorflow>=X.Y` of its own release: installing it into
the trainer image or next to another TensorFlow would pull or replace TensorFlow. Instead the messages
are declared here with exactly the names, numbers and types of tensorflow_serving/apis/{model,predict,
prediction_log}.proto and config/{model_server_config,file_system_storage_path_source}.proto (fields
we don't write are left out, which protobuf's wire and text formats allow), in a private descriptor
pool so they never clash with the real ones. tests/test_warmup.py holds every field to the official
descriptors of tensorflow-serving-api (a test extra) and parses our output with them.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.core.framework import tensor_pb2

PACKAGE = "tensorflow.serving"
_T = descriptor_pb2.FieldDescriptorProto
# message -> [(field, number, type, label, message type or None)]; "<X>Entry" messages are map entries.
MESSAGES = {
    "ModelSpec": [
        ("name", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
        ("signature_name", 3, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
        ("version_label", 4, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
    ],
    "PredictRequest.InputsEntry": [
        ("key", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
        ("value", 2, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".tensorflow.TensorProto"),
    ],
    "PredictRequest": [
        ("model_spec", 1, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "ModelSpec"),
        ("inputs", 2, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "PredictRequest.InputsEntry"),
        ("output_filter", 3, _T.TYPE_STRING, _T.LABEL_REPEATED, None),
    ],
    "PredictLog": [("request", 1, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "PredictRequest")],
    "PredictionLog": [("predict_log", 6, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "PredictLog")],
    "FileSystemStoragePathSourceConfig.ServableVersionPolicy.Latest": [
        ("num_versions", 1, _T.TYPE_UINT32, _T.LABEL_OPTIONAL, None)
    ],
    "FileSystemStoragePathSourceConfig.ServableVersionPolicy.Specific": [
        ("versions", 1, _T.TYPE_INT64, _T.LABEL_REPEATED, None)
    ],
    "FileSystemStoragePathSourceConfig.ServableVersionPolicy": [
        (
            "latest",
            100,
            _T.TYPE_MESSAGE,
            _T.LABEL_OPTIONAL,
            "FileSystemStoragePathSourceConfig.ServableVersionPolicy.Latest",
        ),
        (
            "specific",
            102,
            _T.TYPE_MESSAGE,
            _T.LABEL_OPTIONAL,
            "FileSystemStoragePathSourceConfig.ServableVersionPolicy.Specific",
        ),
    ],
    "FileSystemStoragePathSourceConfig": [],
    "ModelConfig.VersionLabelsEntry": [
        ("key", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
        ("value", 2, _T.TYPE_INT64, _T.LABEL_OPTIONAL, None),
    ],
    "ModelConfig": [
        ("name", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
        ("base_path", 2, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
        ("model_platform", 4, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
        (
            "model_version_policy",
            7,
            _T.TYPE_MESSAGE,
            _T.LABEL_OPTIONAL,
            "FileSystemStoragePathSourceConfig.ServableVersionPolicy",
        ),
        ("version_labels", 8, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "ModelConfig.VersionLabelsEntry"),
    ],
    "ModelConfigList": [("config", 1, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "ModelConfig")],
    "ModelServerConfig": [("model_config_list", 1, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "ModelConfigList")],
}


def _add_file(pool, file_descriptor):
    """Copies a compiled .proto (and what it imports) into `pool`."""
    for dependency in file_descriptor.dependencies:
        _add_file(pool, dependency)
    try:
        pool.FindFileByName(file_descriptor.name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        pool.Add(proto)


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    """One .proto holding MESSAGES, nested types placed under their parents."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="colorizer/serving_protos.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=[tensor_pb2.DESCRIPTOR.name],
    )
    made = {}
    for path in sorted(MESSAGES, key=lambda p: p.count(".")):
        parent, _, name = path.rpartition(".")
        message = (made[parent].nested_type if parent else proto.message_type).add(name=name)
        message.options.map_entry = name.endswith("Entry")
        for field, number, kind, label, type_name in MESSAGES[path]:
            full = (
                (type_name if type_name.startswith(".") else f".{PACKAGE}.{type_name}") if type_name else None
            )
            message.field.add(
                name=field,
                number=number,
                type=kind,
                label=label,
                json_name=_camel(field),
                **({"type_name": full} if full else {}),
            )
        made[path] = message
    return proto


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _classes() -> dict:
    pool = descriptor_pool.DescriptorPool()
    _add_file(pool, tensor_pb2.DESCRIPTOR)
    pool.Add(_file_proto())
    return {
        path: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{path}"))
        for path in MESSAGES
        if not path.endswith("Entry")
    }


CLASSES = _classes()
PredictionLog = CLASSES["PredictionLog"]
ModelServerConfig = CLASSES["ModelServerConfig"]
