"""docs/KUBERNETES.md and the README's cluster commands: each is run by a test or marked cluster-only."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.test_manifests import (
    K8S,
    K8S_VERSION,
    OVERLAYS,
    ROOT,
    TRAINER_CONTAINERS,
    TRAINER_IMAGE,
    kustomize,
    load,
    pod_specs,
)

DOCS = ROOT / "docs" / "KUBERNETES.md"
MARKER = re.compile(r"^<!-- (cluster-only|tested: (.+?)) -->$")
PINNED = "europe-docker.pkg.dev/p/colorizer/trainer@sha256:" + "ab" * 32


def doc_blocks(path=DOCS):
    """(marker line, block text) of every ```bash fence, the marker being the line just before it."""
    lines, blocks = path.read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line.strip() == "```bash":
            end = lines.index("```", i + 1)
            before = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
            blocks.append((before, "\n".join(lines[i + 1 : end])))
    return blocks


def test_every_doc_command_is_tested_or_cluster_only():
    """Each command block of docs/KUBERNETES.md is run by a named test or marked as needing a cluster."""
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    blocks = doc_blocks()
    assert len(blocks) >= 10
    for marker, block in blocks:
        match = MARKER.match(marker)
        assert match, f"no <!-- cluster-only --> or <!-- tested: ... --> before:\n{block}"
        if match.group(2) and ".ci/run" not in match.group(2):
            assert f"def {match.group(2)}(" in tests, f"{match.group(2)} is not a test"


def test_configure_once_leaves_no_placeholder(tmp_path):
    """Runs the doc's configuration step in a copy of k8s/; then no overlay holds a placeholder."""
    [block] = [
        b for m, b in doc_blocks() if m == "<!-- tested: test_configure_once_leaves_no_placeholder -->"
    ]
    shutil.copytree(K8S, tmp_path / "k8s")
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BUCKET": "my-bucket",
        "PROJECT_ID": "my-project",
        "IMAGE_DIGEST": PINNED,
    }
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "gs://my-bucket/" in out.stdout and PINNED in out.stdout and "@my-project.iam" in out.stdout
    for overlay in OVERLAYS:
        objects = kustomize(tmp_path / "k8s" / "overlays" / overlay)
        text = yaml.safe_dump_all(objects)
        for placeholder in ("BUCKET", "PROJECT_ID", "colorizer-trainer:", "image: colorizer-trainer\n"):
            assert placeholder not in text, f"{overlay}: {placeholder!r} left"
        assert "colorizer-settings" not in text, f"{overlay}: the settings ConfigMap must stay local"
        for doc in objects:
            for _, spec in pod_specs(doc):
                for c in spec["containers"]:
                    assert c["name"] not in TRAINER_CONTAINERS or c["image"] == PINNED, overlay


def test_shipped_settings_are_placeholders_skaffold_can_fill():
    """Unconfigured, the trainer image is skaffold's artifact name, so `skaffold run` works as shipped."""
    settings = dict(
        line.split("=", 1)
        for line in (K8S / "settings" / "settings.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(settings) == {
        "BUCKET",
        "PREPARE_GSA",
        "TRAINER_GSA",
        "SERVING_GSA",
        "COLORIZE_GSA",
        "DEV_GSA",
        "TRAINER_IMAGE",
    }
    assert settings["TRAINER_IMAGE"].split(":")[0] == TRAINER_IMAGE


def doc_launcher_commands():
    for path in (DOCS, ROOT / "README.md"):
        for _, block in doc_blocks(path):
            for command in block.replace("\\\n", " ").replace(";", "\n").splitlines():
                command = command.split("#")[0].split("|")[0].strip()
                if command.startswith("python -m trainer.launch submit"):
                    yield command


@pytest.mark.parametrize("command", sorted(set(doc_launcher_commands())))
def test_doc_launcher_commands_dry_run(command, capsys):
    """Every `trainer.launch submit` in the docs parses and builds valid objects (with --dry_run)."""
    from trainer.cluster import launch

    argv = command.replace("$IMAGE_DIGEST", PINNED).replace("$IMAGE", PINNED).split()[3:]
    assert launch.main(argv + ([] if "--dry_run" in argv else ["--dry_run"])) == 0, capsys.readouterr().err
    for obj in yaml.safe_load_all(capsys.readouterr().out):
        if obj["apiVersion"] != "kubeflow.org/v1":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_docs_name_only_existing_overlays_and_jobs():
    """`-k k8s/overlays/X` paths and the Job names the docs wait for exist in the rendered overlays."""
    text = DOCS.read_text() + (ROOT / "README.md").read_text()
    assert set(re.findall(r"-k k8s/overlays/([\w-]+)", text)) <= set(OVERLAYS)
    names = {
        d["metadata"]["name"] for o in OVERLAYS for d in load(f"overlay:{o}") if d["kind"] in ("Job", "TFJob")
    }
    assert set(re.findall(r"trainer\.launch (?:--namespace=\S+ )?wait ([\w-]+)", text)) - {"big"} <= names


def test_readme_cluster_commands_are_the_walkthrough_s():
    """The README's cluster quick start is a subset of docs/KUBERNETES.md's commands, so they can't drift."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("**On a cluster**") :].split("```bash", 1)[1].split("```", 1)[0]
    walkthrough = DOCS.read_text()
    for line in block.replace("\\\n", " ").splitlines():
        command = " ".join(line.split("#")[0].split())
        if command.startswith(("kubectl", "python -m trainer.launch", "cat >")):
            assert command in " ".join(walkthrough.split()), command


def test_every_serving_production_command_is_tested_or_cluster_only():
    """docs/SERVING.md's export -> warm -> evaluate -> promote -> rollback blocks carry a marker naming a
    real test."""
    path = ROOT / "docs" / "SERVING.md"
    text = path.read_text()
    section = text[text.index("## Production") : text.index("## The REST API")]
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    blocks = [(m, b) for m, b in doc_blocks(path) if b in section]
    assert len(blocks) >= 5
    for marker, block in blocks:
        match = MARKER.match(marker)
        assert match, f"no <!-- cluster-only --> or <!-- tested: ... --> before:\n{block}"
        assert not match.group(2) or f"def {match.group(2)}(" in tests, match.group(2)
    assert "python -m trainer.launch promote" in section and "python -m trainer.launch rollback" in section
    from trainer.cluster import launch

    for command in (
        "promote 1712340000 --force --wait",
        "rollback --wait",
        "promote 1 --image_dir=x --psnr_margin=0.2",
    ):
        launch.parser().parse_args(command.split())  # the documented flags exist


def _commands(text: str) -> list:
    """The shell commands of a markdown text, continuation lines joined and comments dropped."""
    blocks = [b.split("```", 1)[0] for b in text.split("```bash")[1:]]
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [" ".join(line.split("#")[0].split()) for line in lines if line.split("#")[0].strip()]


def test_the_walkthrough_creates_an_empty_gpu_pool_and_lets_nodes_pull_the_image():
    """gcloud's node-pools create starts 3 nodes per zone unless told (9 Spot GPU VMs over the quota the
    guide asks for); nodes pull as the default compute account, which new projects give no Editor
    role; and an image built on an arm64 laptop would not run on the GPU nodes."""
    commands = _commands(DOCS.read_text())
    [pool] = [c for c in commands if c.startswith("gcloud container node-pools create")]
    assert "--num-nodes=0" in pool.split()
    assert any(
        "add-iam-policy-binding" in c
        and "-compute@developer.gserviceaccount.com" in c
        and "--role=roles/artifactregistry.reader" in c
        for c in commands
    )
    [cluster] = [c for c in commands if c.startswith("gcloud container clusters create")]
    assert "--enable-dataplane-v2" in cluster.split(), "without it GKE enforces no NetworkPolicy"
    readme = _commands((ROOT / "README.md").read_text())
    builds = [c for c in commands + readme if c.startswith("docker build")]
    assert builds and all("--platform=linux/amd64" in c.split() for c in builds), builds
