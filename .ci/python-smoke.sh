#!/usr/bin/env bash
# CI: the README's set-up and one served run on each supported Python this machine has besides
# the default one (`make test` covers that). Per version: `make setup` into a fresh virtualenv,
# then `make demo` at a small size (1 epoch at 64 px): train, build, verify that the served
# scores equal the in-process reference, serve, score with dcam-client, AUROC; then the review
# station on that run, labelled through its API by the folder-truth script. Everything it
# writes goes under $TMPDIR and is removed afterwards (a virtualenv is about 6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
default=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
root=$(mktemp -d "${TMPDIR:-/tmp}/dcam-python-smoke.XXXXXX")
trap 'rm -rf "$root"' EXIT
summary=()
for py in $(bash .ci/python-check.sh --list); do
  version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$version" = "$default" ] && continue
  echo "== Python $version ($py)"
  work="$root/$version"
  started=$SECONDS
  make --no-print-directory demo PYTHON="$py" VENV="$work/venv" EXTRAS=training,build,client,review \
    DEMO_DATA="$work/data" DEMO_RUN="$work/run" DEMO_REPO="$work/repo" \
    DEMO_SIZE=64 DEMO_EPOCHS=1 2>&1 | grep -v -e '^WARNING: Location' -e 'img/s'
  port=$("$work/venv/bin/python" -c 'from dcam.serve.server import free_port; print(free_port())')
  "$work/venv/bin/dcam-review" open "$work/run/scores.jsonl" --heatmaps "$work/run/heatmaps" \
    --repository "$work/repo" --port "$port" & station=$!
  "$work/venv/bin/python" -m dcam.review.truth "http://127.0.0.1:$port" || { kill $station; exit 1; }
  kill $station; wait $station || true
  numpy=$("$work/venv/bin/python" -c 'import numpy; print(numpy.__version__)')
  summary+=("Python $version: set-up, demo and review station passed in $((SECONDS - started)) s (numpy $numpy)")
  rm -rf "$work"
done
printf '%s\n' "${summary[@]:-no Python besides $default here}"
