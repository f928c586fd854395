#!/usr/bin/env bash
# Installs everything (scripts/setup.sh --test), then runs the whole test suite:
# lint (ruff), types (mypy --strict), the import layers (lint-imports), and pytest (unit, integration, e2e).
# Extra arguments go to pytest, e.g. scripts/test.sh -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
echo "test: ruff"
.venv/bin/ruff check .
echo "test: mypy"
.venv/bin/mypy
echo "test: import layers (docs/architecture.md)"
.venv/bin/lint-imports
echo "test: pytest"
.venv/bin/pytest -q -p no:cacheprovider --durations=25 "$@"  # the slowest tests, in every log
