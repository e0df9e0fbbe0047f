#!/usr/bin/env bash
# Main job end to end on the embedded default: built-in phantom data, local Ray,
# a private redis-server; train -> screen -> query. Extra args go to `patchrank demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/patchrank demo "$@"
