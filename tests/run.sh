#!/usr/bin/env bash
# The test suite: creates or reuses .venv, installs what the tests need, runs pytest.
#
#   bash tests/run.sh              # the default (fast) tests, about 10 minutes on 2 cores
#   bash tests/run.sh --slow       # the tests marked slow
#   bash tests/run.sh -k wer -x    # any other arguments go to pytest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh "dev"

marker="not slow and not gpu"
args=()
for a in "$@"; do
    if [ "$a" = "--slow" ]; then marker="slow and not gpu"; else args+=("$a"); fi
done
export PYTHONHASHSEED=0
exec python -m pytest -m "$marker" "${args[@]}"
