#!/usr/bin/env bash
# The linter: ruff check + ruff format --check (line length 120, pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
