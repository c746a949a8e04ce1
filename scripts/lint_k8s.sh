#!/usr/bin/env bash
# Runs checkov over k8s/ (every manifest and rendered overlay) and docker/, offline.
# checkov gets its own virtualenv: it pins python-dateutil<3, which the kubernetes client refuses,
# so it can't live in the project's environment or its [test] extras.
#   scripts/lint_k8s.sh            # makes .venv-checkov on first use, then runs the checkov test
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOV_VERSION=3.3.30
VENV=${CHECKOV_VENV:-.venv-checkov}
if [ ! -x "$VENV/bin/checkov" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "checkov==$CHECKOV_VERSION"
fi
CHECKOV="$(cd "$VENV" && pwd)/bin/checkov" exec python -m pytest -q tests/test_manifests.py -k checkov
