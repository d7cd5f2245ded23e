#!/usr/bin/env bash
# Run the test suite on CPU (sets up .venv first). Extra arguments go to pytest, e.g. -k finetun.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" python -m pytest tests -q "$@"
