#!/usr/bin/env bash
# The test suite (unit + integration with a private redis-server and local Ray).
# Extra args go to pytest, e.g. `bash scripts/test.sh tests/unit -x`; the fast tier: `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAY_DEDUP_LOGS=0
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "${@:-tests}"
