"""The repository's own checks: ruff (lint and format), mypy on the TensorFlow-free modules, and the
layering of trainer/'s wings (no cycles, no import from a lower layer up to a higher one)."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

TYPED_MODULES = [
    "trainer/train/config.py",
    "trainer/console.py",
    "trainer/errors.py",
    "trainer/data/images.py",
    "trainer/data/photo_source.py",
    "trainer/serve/client.py",
    "trainer/serve/archive.py",
    "trainer/cluster/colorize_job.py",
    "trainer/cluster/starter_export.py",
    "trainer/serve/rest.py",
    "trainer/data/gcs.py",
    "trainer/data/storage.py",
    "trainer/task.py",
    "trainer/serve/promote.py",
    "trainer/data/prepare.py",
    "trainer/data/prepare_stream.py",
    "trainer/data/prepare_tasks.py",
    "trainer/data/prepare_finalize.py",
    "trainer/data/prepare_config.py",
    "trainer/cluster/launch.py",
    "trainer/cluster/image.py",
    "trainer/cluster/manifests.py",
    "trainer/cluster/prepare_job.py",
    "trainer/cluster/train_job.py",
    "trainer/cluster/serving.py",
    "trainer/cluster/k8s.py",
    "trainer/serve/limits.py",
    "trainer/prepare.py",
    "trainer/client.py",
    "trainer/evaluate.py",
    "trainer/launch.py",
]
# trainer/'s layers, lowest first: a module may import from its own layer and the ones below it.
# errors and console are the base; the commands users type (task, prepare, ...) sit on top.
LAYERS = ["base", "data", "serve", "train", "cluster", "commands"]
BASE = {"errors", "console"}


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


def _layer(module: str) -> str:
    """`trainer.serve.export` -> "serve"; `trainer.errors` -> "base"; `trainer.task` -> "commands"."""
    wing = module.split(".")[1]
    return wing if wing in LAYERS else "base" if wing in BASE else "commands"


def import_graph() -> dict:
    """{module: {trainer modules it imports, at any depth of the file}} for every module of trainer/."""
    graph = {}
    for folder, _, names in os.walk(os.path.join(REPO, "trainer")):
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            imported = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainer"):
                    imported |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
                elif isinstance(node, ast.Import):
                    imported |= {a.name for a in node.names if a.name.startswith("trainer")}
            graph[module] = imported
    modules = set(graph)
    return {m: {i for i in imported if i in modules and i != m} for m, imported in graph.items()}


def test_wings_import_only_their_own_layer_and_the_ones_below():
    graph = import_graph()
    assert {
        "trainer.data.prepare",
        "trainer.serve.export",
        "trainer.train.loop",
        "trainer.cluster.launch",
    } <= set(graph)
    upward = [
        f"{m} -> {i}"
        for m, imported in graph.items()
        for i in imported
        if i != "trainer" and LAYERS.index(_layer(i)) > LAYERS.index(_layer(m))
    ]
    assert not upward, upward


def test_trainer_has_no_import_cycles():
    graph, done, path = import_graph(), set(), []

    def visit(module):
        if module in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_no_folder_of_trainer_holds_more_than_twelve_modules():
    for folder, _, names in os.walk(os.path.join(REPO, "trainer")):
        modules = [n for n in names if n.endswith(".py") and n != "__init__.py"]
        assert len(modules) <= 12, (folder, modules)
