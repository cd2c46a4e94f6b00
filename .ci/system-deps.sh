#!/usr/bin/env bash
# Usage: system-deps.sh [PYTHON]
# Debian packages the project needs for the interpreter PYTHON (default python3). As root they
# are installed; otherwise we name what is missing.
#   libpython3.X:  the embedded tritonserver's Python-backend stub for 3.X links
#                  libpython3.X.so.1.0; only where the interpreter does not ship it in its own
#                  LIBDIR (pyenv and --enable-shared builds do; Debian's python3.X does not)
#   libb64-0d:     tritonclient 2.51's perf_analyzer links libb64.so.0d
#   python3.X-venv: only where the interpreter cannot create a virtualenv by itself
#   kubectl:       optional, renders deploy/ in the tests
#   prometheus:    optional, its promtool checks and unit-tests deploy/'s alert rules
#   chromium:      optional, the browser the review station's tests drive through Playwright
set -euo pipefail
py=${1:-python3}
version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
needed=(libb64-0d)
"$py" -c '
import os, sys, sysconfig
libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
sys.exit(not (libdir and soname and os.path.isfile(os.path.join(libdir, soname))))
' || needed+=("libpython$version")
"$py" -c 'import ensurepip, venv' 2>/dev/null || needed+=("python$version-venv")
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
# Debian's chromium is the browser tests/test_review_browser.py drives (Playwright never
# downloads one here); without it those tests skip, and fail under CI.
if ! command -v chromium >/dev/null && [ "$(id -u)" -eq 0 ]; then
  (apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    || echo "chromium is not installable here: tests/test_review_browser.py will skip" >&2
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
apt-get update -qq
# One at a time, so that a package this distribution's archive lacks is named with its fix.
failed=()
for pkg in "${missing[@]}"; do
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null || failed+=("$pkg")
done
[ ${#failed[@]} -eq 0 ] && exit 0
for pkg in "${failed[@]}"; do
  case $pkg in
    libpython*) echo "system-deps: $pkg is not in this distribution's archive. Use a Python" \
      "$version that ships its own shared libpython (pyenv; python.org builds;" \
      "./configure --enable-shared), or the distribution's own python3 (make demo" \
      "PYTHON=python3)" >&2 ;;
    libb64-0d) echo "system-deps: libb64-0d is not in this archive: perf_analyzer (make" \
      "bench-throughput) will not start; everything else works" >&2 ;;
    *) echo "system-deps: could not install $pkg" >&2 ;;
  esac
done
# Only the stub's libpython and the venv module stop the two commands.
for pkg in "${failed[@]}"; do [ "$pkg" != libb64-0d ] && exit 1; done
exit 0
