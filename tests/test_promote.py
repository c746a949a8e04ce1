"""The promotion gate, promote and rollback, against a fake of TF Serving's config reloads.

FakeServing applies each model config the way ServerCore::ReloadConfig does for the parts we rely
on (model_servers/server_core.cc): the specific versions listed are loaded, the others unloaded; a
config that moves an existing label to a version that is not AVAILABLE is refused as a whole
(UpdateModelVersionLabelMap), and a pod that starts fresh accepts any labels
(--allow_version_labels_for_unavailable_models). Exports are real, and scored by trainer.evaluate.
"""

import json

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tests.conftest import write_photos
from trainer import export, launch, launch_serving, promote
from trainer.models import build_model


class FakeServing:
    """The ConfigMaps and the serving pods, each pod holding what TF Serving would have loaded."""

    def __init__(self, export_dir, pods=("serving-a", "serving-b")):
        self.text, self.annotations, self.export_dir = "", {}, str(export_dir)
        self.pods_state = {pod: {"versions": [], "labels": {}} for pod in pods}
        self.refused = 0

    def read(self):
        return self.text, dict(self.annotations), self.export_dir

    def write(self, text, live_history):
        self.text, self.annotations = text, {promote.HISTORY_ANNOTATION: json.dumps(live_history)}
        text_format.Parse(text, model_server_config_pb2.ModelServerConfig())  # what TF Serving parses
        for state in self.pods_state.values():
            self.reload(state, *promote.parse(text))

    def reload(self, state, versions, labels):
        for label, version in labels.items():
            moved = label in state["labels"] and state["labels"][label] != version
            if moved and version not in state["versions"]:
                self.refused += 1  # FailedPrecondition: the whole reload is dropped
                return
        state["versions"], state["labels"] = list(versions), dict(labels)

    def pods(self):
        return sorted(self.pods_state)

    def model_status(self, pod, model_name):
        return {v: "AVAILABLE" for v in self.pods_state[pod]["versions"]}


def gray_model():
    """A Lab model whose a*b* are 0: it returns the gray input, the baseline, to the pixel."""
    model = build_model("unet", 2, base_filters=4)
    for variable in model.get_layer("chroma").weights:
        variable.assign(np.zeros(variable.shape, np.float32))
    return model


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Three exports: v1 and v2 the same colourful model, v3 a gray one (colourfulness 0: worse)."""
    root = tmp_path_factory.mktemp("export")
    colourful = build_model("unet", 2, base_filters=4)
    made = [export.export_saved_model(colourful, "lab", str(root)), export.export_saved_model(colourful, "lab", str(root)),
            export.export_saved_model(gray_model(), "lab", str(root))]
    photos = tmp_path_factory.mktemp("held_out")
    write_photos(photos, 4, start=300)
    return str(root), [int(p.rsplit("/", 1)[1]) for p in made], str(photos)


@pytest.fixture
def serving(versions, monkeypatch):
    fake = FakeServing(versions[0])
    monkeypatch.setattr(launch_serving, "Cluster", lambda *args: fake)
    return fake


def run(*argv):
    return launch.main(["--poll_seconds=0", *argv], api=object())


def test_the_rendered_config_is_a_model_server_config():
    text = promote.render("colorizer", "gs://b/export", [2, 1], {"stable": 2, "previous": 1})
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    [model] = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("colorizer", "gs://b/export", "tensorflow")
    assert list(model.model_version_policy.specific.versions) == [1, 2] and dict(model.version_labels) == {"stable": 2, "previous": 1}
    assert promote.parse("") == ([], {}), "the shipped empty config: TF Serving starts with no model"


@pytest.mark.parametrize("new, old, refused", [
    ({"psnr": 22.0, "colourfulness": 20.0}, {"psnr": 22.1, "colourfulness": 21.0}, []),
    ({"psnr": 21.7, "colourfulness": 20.0}, {"psnr": 22.0, "colourfulness": 20.0}, ["PSNR"]),
    ({"psnr": 22.0, "colourfulness": 17.0}, {"psnr": 22.0, "colourfulness": 20.0}, ["colourfulness"]),
])
def test_gate_margins(new, old, refused):
    report = lambda m: {"120": {"model": m}, "full": None}  # noqa: E731
    reasons = promote.gate(report(new), report(old))
    assert [r.split()[0] for r in reasons] == refused


def test_first_promotion_then_an_equal_candidate_then_rollback(versions, serving, capsys):
    _, (v1, v2, _), photos = versions
    assert run("promote", str(v1), "--force") == 0
    assert all(p == {"versions": [v1], "labels": {"stable": v1}} for p in serving.pods_state.values())
    assert run("promote", str(v2), f"--image_dir={photos}", "--wait") == 0
    assert all(p == {"versions": [v1, v2], "labels": {"stable": v2, "previous": v1}} for p in serving.pods_state.values())
    assert "curl -s http://localhost:8501/v1/models/colorizer/labels/stable" in capsys.readouterr().out
    assert serving.refused == 0, "every config was one TF Serving accepts"
    assert run("rollback") == 0
    assert all(p == {"versions": [v1], "labels": {"stable": v1}} for p in serving.pods_state.values())
    assert run("rollback") == 1 and "no previous live version" in capsys.readouterr().err


def test_a_worse_candidate_is_refused_unless_forced(versions, serving, capsys):
    _, (v1, _, v3), photos = versions
    run("promote", str(v1), "--force")
    capsys.readouterr()
    assert run("promote", str(v3), f"--image_dir={photos}") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: refused: version {v3} vs live {v1}: colourfulness 0.0 is more than 10%") and err.count("\n") == 1
    assert promote.live_version(serving.text) == v1
    assert run("promote", str(v3), "--force") == 0 and promote.live_version(serving.text) == v3


def test_skipping_the_canary_step_would_be_refused_by_tf_serving(versions, serving):
    """Why promote writes two configs: moving `stable` straight to an unloaded version is dropped."""
    _, (v1, v2, _), _ = versions
    serving.write(promote.render("colorizer", serving.export_dir, [v1], {"stable": v1}), [v1])
    serving.write(promote.render("colorizer", serving.export_dir, [v1, v2], {"stable": v2, "previous": v1}), [v1, v2])
    assert serving.refused == 2 and serving.pods_state["serving-a"]["labels"] == {"stable": v1}


def test_a_version_that_never_loads_times_out_in_one_line(versions, serving, monkeypatch, capsys):
    _, (v1, v2, _), _ = versions
    run("promote", str(v1), "--force")
    capsys.readouterr()
    monkeypatch.setattr(serving, "model_status", lambda pod, name: {v1: "AVAILABLE"} if pod == "serving-b" else {
        v1: "AVAILABLE", v2: "LOADING"})
    assert run("promote", str(v2), "--force", "--timeout=0") == 1
    err = capsys.readouterr().err
    assert err == f"error: version {v2} not AVAILABLE within 0s on serving-a, serving-b\n"


def test_promote_needs_held_out_photos_or_force(versions, serving, capsys):
    _, (v1, v2, _), _ = versions
    run("promote", str(v1), "--force")
    assert run("promote", str(v2)) == 2 and "--image_dir" in capsys.readouterr().err
