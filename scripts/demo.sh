#!/usr/bin/env bash
# A real tunnel between two lab sites: start, status, ping across, stop (inside a UML kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec python3 -m tests.lab run -- python3 -m tests.lab.demo "$@"
