#!/usr/bin/env bash
# Usage: checkov.sh
# Installs checkov (Bridgecrew's policy checker for Kubernetes manifests, from PyPI) into its own
# virtualenv, .ci/checkov-venv (git-ignored): its pins must not meet the project's. The version
# is pinned here; tests/test_checkov.py runs it over every rendered overlay with the skip list in
# deploy/checkov.yaml. Idempotent: nothing happens while the pinned version is installed.
set -euo pipefail
version=3.3.30
venv="$(cd "$(dirname "$0")" && pwd)/checkov-venv"
if [ -x "$venv/bin/checkov" ] && [ "$("$venv/bin/checkov" --version 2>/dev/null)" = "$version" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
"$venv/bin/pip" install --quiet "checkov==$version" 2> >(grep -v "^WARNING: Location" >&2)
echo "checkov: $("$venv/bin/checkov" --version) in $venv"
