#!/usr/bin/env bash
# Env-creation time of ONE tox env, measured in one run: tox-uv (uv venv + uv pip install, one shared uv cache,
# hard links) versus plain virtualenv + pip (`tox --runner virtualenv`). `--notest`: create and install only.
# Each runner first builds the env once (warms its package cache), then the timed run recreates it (-r).
#   bash bench/env_creation.sh [ENV]        (default: the newest env of `tox -l`)
set -euo pipefail
cd "$(dirname "$0")/.."
TOX=${TOX:-.venv/bin/tox}
ENV=${1:-$($TOX -l | grep -E '^peft[0-9]+-tf[0-9]+$' | tail -n1)}
WORK=$(mktemp -d /tmp/peft-compat-envbench-XXXX)
trap 'rm -rf "$WORK"' EXIT
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >"$WORK/last.log" 2>&1 || { tail -20 "$WORK/last.log"; exit 1; }; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
echo "env $ENV"
uv_cold=$(secs "$TOX" -e "$ENV" --notest -r --workdir "$WORK/uv")
uv_warm=$(secs "$TOX" -e "$ENV" --notest -r --workdir "$WORK/uv")
pip_cold=$(secs "$TOX" -e "$ENV" --notest -r --runner virtualenv --workdir "$WORK/pip")
pip_warm=$(secs "$TOX" -e "$ENV" --notest -r --runner virtualenv --workdir "$WORK/pip")
# bytes the env holds on its own: files with a single link (hard links into the uv cache are shared, not copied)
own() { find "$1" -type f -links 1 -printf '%s\n' | awk '{s+=$1} END {printf "%d", s/1048576}'; }
printf 'tox-uv   (uv-venv-runner): first %6.1f s, recreate %6.1f s, own bytes %5s MiB\n' "$uv_cold" "$uv_warm" "$(own "$WORK/uv/$ENV")"
printf 'virtualenv + pip          : first %6.1f s, recreate %6.1f s, own bytes %5s MiB\n' "$pip_cold" "$pip_warm" "$(own "$WORK/pip/$ENV")"
