"""The repository's own checks: ruff (lint and format) and mypy on the TensorFlow-free modules."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

TYPED_MODULES = [
    "trainer/config.py",
    "trainer/console.py",
    "trainer/errors.py",
    "trainer/images.py",
    "trainer/photo_source.py",
    "trainer/client.py",
    "trainer/rest.py",
    "trainer/gcs.py",
    "trainer/task.py",
    "trainer/promote.py",
    "trainer/prepare.py",
    "trainer/prepare_stream.py",
    "trainer/prepare_tasks.py",
    "trainer/prepare_finalize.py",
    "trainer/launch.py",
    "trainer/launch_image.py",
    "trainer/launch_manifests.py",
    "trainer/launch_prepare.py",
    "trainer/launch_serving.py",
]


def _run(*command):
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    ruff = shutil.which("ruff") or pytest.fail("ruff is not installed: pip install -e '.[test]'")
    run = _run(ruff, *command)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_on_the_tensorflow_free_modules():
    run = _run(sys.executable, "-m", "mypy", *TYPED_MODULES)
    assert run.returncode == 0, run.stdout + run.stderr
