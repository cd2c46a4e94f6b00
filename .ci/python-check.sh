#!/usr/bin/env bash
# Usage: python-check.sh PYTHON [VENV]
#        python-check.sh --list    (one interpreter per supported version found here, newest first)
# Prints the interpreter `make` should build VENV with, or stops in the first second, naming the
# fix, instead of failing minutes into the install:
#   - PYTHON does not run: a pyenv shim for a version pyenv has but has not enabled (python3.12 on
#     a machine whose pyenv global is 3.11) resolves to that version's own interpreter;
#     otherwise it lists the interpreters here that would do;
#   - a version outside 3.10 to 3.13: the project needs 3.10, and the embedded tritonserver's
#     wheel (nvidia-pytriton 0.7.0) carries Python-backend stubs up to 3.13;
#   - VENV exists and was made with another version.
set -euo pipefail
py=${1:-python3}
venv=${2:-}
supported=(3.13 3.12 3.11 3.10)  # newest first
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

# Interpreters of a minor version, on PATH or installed by pyenv, that actually run.
interpreters_of() {
  local v=$1 c
  for c in $(command -v "python$v" 2>/dev/null) "$pyenv_root"/versions/"$v".*/bin/python"$v"; do
    [ -x "$c" ] && [ "$(version_of "$c")" = "$v" ] && echo "$c"
  done | sort -uV | tail -1
}

available() {
  local v c
  for v in "${supported[@]}"; do
    c=$(interpreters_of "$v")
    [ -n "$c" ] && echo "  make demo PYTHON=$c"
  done
}

if [ "$py" = --list ]; then
  for v in "${supported[@]}"; do interpreters_of "$v"; done
  exit 0
fi

if ! version=$(version_of "$py"); then
  wanted=$(basename "$py" | sed -n 's/^python\(3\.[0-9]*\)$/\1/p')
  resolved=${wanted:+$(interpreters_of "$wanted")}
  if [ -z "$resolved" ]; then
    echo "python: '$py' does not run here. Interpreters here that the project supports:" >&2
    available >&2 || echo "  none: install Python 3.10 to 3.13 (e.g. apt-get install python3)" >&2
    exit 1
  fi
  echo "python: '$py' does not run here (a pyenv shim not enabled?); using $resolved" >&2
  py=$resolved version=$wanted
fi

if [[ ! " ${supported[*]} " == *" $version "* ]]; then
  {
    echo "python: $py is Python $version; the project runs on Python 3.10 to 3.13 (the embedded"
    echo "tritonserver carries Python-backend stubs up to 3.13). Interpreters here that would do:"
    available || echo "  none: install Python 3.13 (apt-get install python3.13, or pyenv install 3.13)"
  } >&2
  exit 1
fi

if [ -n "$venv" ] && [ -x "$venv/bin/python" ]; then
  have=$(version_of "$venv/bin/python" || echo "broken")
  if [ "$have" != "$version" ]; then
    echo "python: $venv was made with Python $have, not $version: remove it (rm -rf $venv), or" \
      "keep both with VENV=.venv-$version" >&2
    exit 1
  fi
fi
"$py" -c 'import sys; print(sys.executable)'
