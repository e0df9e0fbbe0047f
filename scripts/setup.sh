#!/usr/bin/env bash
# Idempotent set-up: .venv with CPU torch (pinned), PatchRank (editable) and test deps,
# plus redis-server (used by the embedded default and the tests) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
apt_install() {  # apt_install PACKAGE WHAT-TO-DO-WITHOUT-APT
  echo "[setup] installing $1" >&2
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null
  else
    echo "[setup] apt-get unavailable: $2" >&2
    exit 1
  fi
}
command -v redis-server >/dev/null 2>&1 || apt_install redis-server "install Redis >= 6.2 yourself"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "[setup] needs Python >= 3.10 (set PYTHON=...)" >&2; exit 1; }
if [ ! -x .venv/bin/python ] && ! "$PY" -c 'import ensurepip' 2>/dev/null; then  # Debian/Ubuntu: venv's pip bootstrap is a package
  apt_install "python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv" \
    "$PY cannot create a venv (no ensurepip): install your distribution's venv package"
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.patchrank-installed
want=$(cat pyproject.toml setup.py requirements-ci.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing dependencies into .venv (first run takes a few minutes)" >&2
  log=.venv/setup.log
  run() { "$@" >>"$log" 2>&1 || { echo "[setup] failed: $* (see $log)" >&2; tail -n 30 "$log" >&2; exit 1; }; }
  : > "$log"
  run .venv/bin/python -m pip install --upgrade pip
  run .venv/bin/python -m pip install -r requirements-ci.txt
  run .venv/bin/python -m pip install -e '.[dev]'
  .venv/bin/python -c "import torch, ray, redis, pyarrow, nibabel, pydantic, duckdb, patchrank.model, patchrank.pipeline" 
  echo "$want" > "$stamp"
fi
