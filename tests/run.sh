#!/usr/bin/env bash
# The test suite: creates or reuses .venv, installs what the tests need, runs pytest.
#
#   bash tests/run.sh              # the default (fast) tests, about 10 minutes on 2 cores
#   bash tests/run.sh --slow       # the tests marked slow
#   bash tests/run.sh -k wer -x    # any other arguments go to pytest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# System packages of the live tests (tests/serve), installed when we are root: PortAudio and a
# PulseAudio server of their own for the microphone (test_mic.py), Chromium for the browser page.
export ASR_APT_OPTIONAL="${ASR_APT_OPTIONAL:-} libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins chromium openssl"
source scripts/bootstrap.sh "dev,serve"

marker="not slow and not gpu"
args=()
for a in "$@"; do
    if [ "$a" = "--slow" ]; then marker="slow and not gpu"; else args+=("$a"); fi
done
export PYTHONHASHSEED=0
exec python -m pytest -m "$marker" "${args[@]}"
