#!/usr/bin/env bash
# Usage: disk-check.sh GIB PATH WHAT
# Stops with one clear line when PATH's filesystem has less than GIB GiB free. A full disk
# otherwise shows up as hundreds of unrelated test errors (it did once in CI: "No space left").
set -euo pipefail
need_gib=$1 path=$2 what=$3
mkdir -p "$path"
free_kib=$(df -Pk "$path" | awk 'NR == 2 {print $4}')
free_gib=$((free_kib / 1048576))
if [ "$free_gib" -lt "$need_gib" ]; then
  echo "disk: $what needs about $need_gib GiB free in $path; only $free_gib GiB is free" >&2
  exit 1
fi
echo "disk: $free_gib GiB free in $path ($what needs about $need_gib GiB)"
