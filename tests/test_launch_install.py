"""`python -m trainer.launch` after `pip install .`, away from any checkout: the package brings the manifests.

Each test installs a copy of the sources with pip into a folder of its own and runs the launcher with
only that folder on PYTHONPATH, from a directory without k8s/. Offline when this Python has
setuptools and wheel (as a venv with the test extras does); otherwise pip fetches them to build.
"""

import ast
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.test_launch import IMAGE, container

pytestmark = pytest.mark.system  # real processes, servers or a second TensorFlow (README: test tiers)

ROOT = Path(__file__).resolve().parents[1]
MARK = "colorizer.dev/manifests"
# Pillow releases with a known hole in what prepare and the client do with untrusted photos (decode),
# by the release that fixed it: CVE-2023-4863 (libwebp heap overflow, 10.0.1 bundles libwebp 1.3.2),
# CVE-2024-28219 (buffer overflow in _imagingcms, 10.3.0), CVE-2026-25990 (out-of-bounds write from
# a crafted PSD in >= 10.3.0, 12.1.1, its integer-overflow case 12.2.0) and CVE-2026-40192 (FITS
# GZIP decompression bomb in >= 10.3.0, 12.2.0). Pillow's release notes, Security sections.
PILLOW_VULNERABLE = ("10.0.0", "10.0.1", "10.2.0", "10.3.0", "11.3.0", "12.1.1")
PILLOW_FLOOR = "12.2.0"


def copy_sources(dest: Path, names) -> Path:
    """A source tree holding only `names` from the repository (no __pycache__, no egg-info, no build/)."""
    dest.mkdir()
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def pip_install(source: Path, target: Path) -> Path:
    """`pip install --no-deps --target` of a source tree, as a user without the repository installs it."""
    offline = (
        ["--no-build-isolation", "--no-index"]
        if all(importlib.util.find_spec(m) for m in ("setuptools", "wheel"))
        else []
    )
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            *offline,
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return target


def launch(site: Path, cwd: Path, *argv):
    """`python -m trainer.launch ARGV` with the installed copy first on the path, run from `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "trainer.launch", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_installed_launcher_renders_from_its_packaged_manifests(tmp_path):
    source = copy_sources(tmp_path / "src", ("setup.py", "README.md", "trainer", "k8s"))
    documents = list(yaml.safe_load_all((source / "k8s" / "job.yaml").read_text()))
    [job] = [d for d in documents if d and d["kind"] == "Job"]
    job["metadata"]["labels"][MARK] = "installed"  # marks this copy: the repository's k8s/ doesn't have it
    (source / "k8s" / "job.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    site = pip_install(source, tmp_path / "site")
    shutil.rmtree(source)  # nothing but the installed package is left to read
    assert (site / "trainer" / "k8s" / "components" / "multinode" / "multinode.yaml").is_file()
    run = launch(
        site,
        tmp_path / "elsewhere",
        "submit",
        f"--image={IMAGE}",
        "--name=installed",
        "--dry_run",
        "--arg=--epochs=3",
    )
    assert run.returncode == 0, run.stderr
    [rendered] = list(yaml.safe_load_all(run.stdout))
    assert rendered["metadata"]["labels"][MARK] == "installed" and rendered["metadata"]["name"] == "installed"
    assert container(rendered)["args"][-1] == "--epochs=3"


def test_without_packaged_manifests_the_error_names_where_it_looked(tmp_path):
    """The trainer image installs without k8s/ (its build context, .dockerignore): --manifests still works."""
    site = pip_install(
        copy_sources(tmp_path / "src", ("setup.py", "README.md", "trainer")), tmp_path / "site"
    )
    assert (site / "trainer" / "launch.py").is_file() and not (site / "trainer" / "k8s").exists()
    elsewhere = tmp_path / "elsewhere"
    run = launch(site, elsewhere, "submit", f"--image={IMAGE}", "--dry_run")
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    for place in (site / "k8s", site / "trainer" / "k8s", elsewhere.resolve() / "k8s"):
        assert str(place) in line, line
    assert "--manifests" in line
    run = launch(site, elsewhere, "submit", f"--image={IMAGE}", "--dry_run", f"--manifests={ROOT / 'k8s'}")
    assert run.returncode == 0 and list(yaml.safe_load_all(run.stdout))[0]["kind"] == "Job", run.stderr


def install_requires() -> list:
    """setup.py's install_requires, read from its source (setup.py runs setup() when imported)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    [call] = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setup"
    ]
    [requires] = [keyword.value for keyword in call.keywords if keyword.arg == "install_requires"]
    return [Requirement(text) for text in ast.literal_eval(requires)]


def test_pillow_is_pinned_past_its_known_decoder_holes():
    [pillow] = [r for r in install_requires() if r.name.lower() == "pillow"]
    assert not [v for v in PILLOW_VULNERABLE if pillow.specifier.contains(v)], pillow
    assert pillow.specifier.contains(PILLOW_FLOOR), pillow
    assert pillow.specifier.contains(importlib.metadata.version("pillow")), "the installed Pillow is too old"
