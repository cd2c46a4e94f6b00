#!/usr/bin/env bash
# Debian packages the project needs. As root they are installed; otherwise we name what is missing.
#   libpython3.11: the embedded tritonserver's Python-backend stub links it
#   libb64-0d:     tritonclient's perf_analyzer links libb64.so.0d
#   python3-venv:  only where the interpreter cannot create a virtualenv by itself
#   kubectl:       optional, renders deploy/ in the tests
#   prometheus:    optional, its promtool checks and unit-tests deploy/'s alert rules
set -euo pipefail
needed=(libpython3.11 libb64-0d)
python3 -c 'import ensurepip, venv' 2>/dev/null || needed+=(python3-venv)
missing=()
for pkg in "${needed[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# kubectl (kustomize built in) renders deploy/ in tests/test_deploy.py, which skips without it.
# Optional: Debian's own archive lacks it; the Google Cloud CLI apt repository has it.
if ! command -v kubectl >/dev/null && [ "$(id -u)" -eq 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl) \
    || echo "kubectl is not installable here: tests/test_deploy.py will skip" >&2
fi
# promtool checks the alert rules in tests/test_alert_rules.py, which skips without it. Debian's
# prometheus package carries it; --no-install-recommends keeps the server's extras out.
if ! command -v promtool >/dev/null && [ "$(id -u)" -eq 0 ]; then
  (apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
    || echo "promtool is not installable here: tests/test_alert_rules.py will skip" >&2
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "missing Debian packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
