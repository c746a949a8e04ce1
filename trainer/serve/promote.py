"""The promotion gate: which exported versions TF Serving serves, changed only by `promote` and `rollback`.

With the gate on (k8s/overlays/serve-gated), TF Serving reads a ModelServerConfig from the ConfigMap
`colorizer-serving-models` (--model_config_file, re-read every --model_config_file_poll_wait_seconds)
whose `model_version_policy { specific { versions } }` names the versions it may load: an export the
trainer writes to EXPORT_DIR stays staged (not loaded) until promoted. Labels: `stable` is the live
version, `previous` the one before it (still loaded, so a rollback is instant), `canary` a version
being loaded. Unlabelled requests go to the highest loaded version (ServerCore's ServableRequest::Latest).

TF Serving refuses a config that moves an existing label to a version not yet AVAILABLE
(model_servers/server_core.cc UpdateModelVersionLabelMap, FailedPrecondition; the whole reload is
dropped), so making a version live takes up to two configs: first load it under a new `canary` label
next to the live one, wait until every serving pod reports it AVAILABLE, then move `stable` to it.
The history of live versions (newest last) is kept in the ConfigMap's annotation, so `rollback` knows
where to go back to.
"""

import json

from google.protobuf import text_format

from trainer.serve.serving_protos import ModelServerConfig

CONFIGMAP = "colorizer-serving-models"
CONFIG_KEY = "models.config"
HISTORY_ANNOTATION = "colorizer.dev/live-history"
PSNR_MARGIN_DB = 0.2
COLOURFULNESS_MARGIN = 0.10


class GateError(Exception):
    """The candidate is worse than the live version beyond the margins: refused unless forced."""


def render(model_name: str, base_path: str, versions, labels: dict) -> str:
    """A ModelServerConfig text proto serving `versions` of one model, with `labels` {label: version}."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add(
        name=model_name, base_path=base_path, model_platform="tensorflow"
    )
    model.model_version_policy.specific.versions.extend(sorted(set(versions)))
    for label, version in sorted(labels.items()):
        model.version_labels[label] = version
    return text_format.MessageToString(config)


def parse(text: str):
    """(versions, labels) of a config written by `render` (empty for the shipped, empty config)."""
    config = text_format.Parse(text or "", ModelServerConfig())
    if not config.model_config_list.config:
        return [], {}
    [model] = config.model_config_list.config
    return sorted(model.model_version_policy.specific.versions), dict(model.version_labels)


def phases(live, target) -> list:
    """The (versions, labels) configs that make `target` live, in order; wait for AVAILABLE between them.

    Going forward (target above live) keeps the old live version loaded as `previous`; going back
    unloads the newer one, since unlabelled requests go to the highest loaded version.
    """
    if live is None or live == target:
        return [([target], {"stable": target})]
    load = (sorted({live, target}), {"stable": live, "canary": target})
    final = (
        ([live, target], {"stable": target, "previous": live})
        if target > live
        else ([target], {"stable": target})
    )
    return [load, final]


def gate(
    candidate: dict,
    live: dict,
    psnr_margin: float = PSNR_MARGIN_DB,
    colourfulness_margin: float = COLOURFULNESS_MARGIN,
) -> list:
    """Why the candidate's report is worse than the live one's beyond the margins ([] = it may go live).

    Compares the reports of `trainer.evaluate` on the same images: the full-resolution section when
    both have one (what clients get), else the 120x120 one.
    """
    section = "full" if candidate.get("full") and live.get("full") else "120"
    new, old = candidate[section]["model"], live[section]["model"]
    reasons = []
    if new["psnr"] < old["psnr"] - psnr_margin:
        reasons.append(
            f"PSNR {new['psnr']:.2f} dB is more than {psnr_margin} dB below the live {old['psnr']:.2f} dB"
        )
    if new["colourfulness"] < old["colourfulness"] * (1 - colourfulness_margin):
        reasons.append(
            f"colourfulness {new['colourfulness']:.1f} is more than {colourfulness_margin:.0%} below "
            f"the live {old['colourfulness']:.1f}"
        )
    return reasons


def history(annotations: dict | None) -> list:
    """The live versions so far, oldest first."""
    return json.loads((annotations or {}).get(HISTORY_ANNOTATION, "[]"))


def live_version(text: str):
    """The version labelled `stable` in a config, or None before the first promotion."""
    return parse(text)[1].get("stable")
