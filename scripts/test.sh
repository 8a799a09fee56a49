#!/usr/bin/env bash
# Install what the tests need, check style and types, run every test (lab tests boot UML).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
python3 -m ruff check .
python3 -m mypy
python3 -m pytest -v -m "lab or not lab" "$@"  # both tiers; pytest alone runs the fast one
