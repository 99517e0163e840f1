#!/usr/bin/env bash
# Creates or reuses .venv at the repo root and installs what the project needs.
#
#   source scripts/bootstrap.sh [EXTRAS]     e.g. EXTRAS="dev,serve"
#
# System packages come from apt-get when we are root; otherwise the script names what is
# missing and how to install it, and stops. Python packages go into .venv: torch first, pinned,
# in its own step (an unpinned torch pulls several GB of CUDA packages), then this project in
# editable mode with the requested extras. A stamp file skips the pip step when nothing changed.
#
# Which torch build: ASR_TORCH_INDEX=URL adds that package index for the torch step (e.g. a
# CUDA index); ASR_TORCH_INDEX= (empty) uses pip's own sources only. Unset: on a machine
# without an NVIDIA GPU (no nvidia-smi, no /proc/driver/nvidia, no /dev/nvidiactl: a container
# with the driver but not its tools counts as a GPU machine), PyTorch's CPU index when it
# answers within 5 s (PyPI's Linux torch is the CUDA build), otherwise pip's own sources (a
# mirror or find-links with the CPU wheel). A torch $TORCH_VERSION already in .venv is kept,
# whichever build it is: to switch builds, `.venv/bin/pip uninstall torch` first.
# (ASR_NVIDIA_PROBES replaces the list of files that mean "NVIDIA driver here"; for tests.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-}"
TORCH_VERSION="2.13.0"

# Debian packages: TTS engines and text for the embedded corpus (ASR_NEEDS_TTS=0 leaves them
# out: the LibriSpeech recipe reads recorded speech), libsndfile for soundfile.
# Extra names can be passed through ASR_APT_PACKAGES (needed: the script stops when they are
# missing and it cannot install them) and ASR_APT_OPTIONAL (installed when we are root, otherwise
# only named; tests/run.sh passes what the live tests need: PortAudio, PulseAudio, Chromium).
APT_TTS="espeak-ng flite festival festvox-kallpc16k wordnet-base"
[ "${ASR_NEEDS_TTS:-1}" = 0 ] && APT_TTS=""
APT_PACKAGES="$APT_TTS libsndfile1 ${ASR_APT_PACKAGES:-}"
APT_OPTIONAL="${ASR_APT_OPTIONAL:-}"

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

apt_missing() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
missing_apt=($(apt_missing $APT_PACKAGES))
missing_opt=($(apt_missing $APT_OPTIONAL))
can_apt=0
[ "$(id -u)" = "0" ] && command -v apt-get >/dev/null && can_apt=1
if [ $((${#missing_apt[@]} + ${#missing_opt[@]})) -gt 0 ] && [ $can_apt = 1 ]; then
    apt-get update -qq
fi
if [ ${#missing_apt[@]} -gt 0 ]; then
    if [ $can_apt = 1 ]; then
        say "installing system packages: ${missing_apt[*]}"
        apt_install "${missing_apt[@]}"
    else
        say "missing system packages: ${missing_apt[*]}"
        say "install them first, e.g.: sudo apt-get install ${missing_apt[*]} ${missing_opt[*]}"
        say "(on other systems: the same TTS engines espeak-ng, flite and festival, and WordNet 3.0 data)"
        exit 1
    fi
fi
if [ ${#missing_opt[@]} -gt 0 ]; then
    if [ $can_apt = 1 ]; then
        say "installing optional system packages: ${missing_opt[*]}"
        if ! apt_install "${missing_opt[@]}"; then  # one by one: a package this system lacks skips only itself
            for pkg in "${missing_opt[@]}"; do
                apt_install "$pkg" || say "could not install $pkg (the tests that need it will say so)"
            done
        fi
    else
        say "optional system packages missing: ${missing_opt[*]} (the tests that need them will say so)"
        say "to run those tests too: sudo apt-get install ${missing_opt[*]}"
    fi
fi

PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    command -v "$PY" >/dev/null || { say "no $PY found: install Python >= 3.10"; exit 1; }
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { say "$PY is older than 3.10"; exit 1; }
    say "creating $ROOT/.venv"
    "$PY" -m venv "$ROOT/.venv" || { say "python venv failed: install python3-venv"; exit 1; }
fi
VPY="$ROOT/.venv/bin/python"

stamp="$ROOT/.venv/.asr-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-[$EXTRAS]"
if [ ! -f "$stamp" ] || ! grep -qxF -- "$want" "$stamp"; then
    if ! "$VPY" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
        torch_index="${ASR_TORCH_INDEX-auto}"
        if [ "$torch_index" = auto ]; then
            torch_index=""
            cpu_index="https://download.pytorch.org/whl/cpu"
            gpu=0
            command -v nvidia-smi >/dev/null 2>&1 && gpu=1
            for probe in ${ASR_NVIDIA_PROBES-/proc/driver/nvidia/version /dev/nvidiactl}; do
                [ -e "$probe" ] && gpu=1
            done
            if [ $gpu = 0 ] && "$VPY" -c "import urllib.request as u; u.urlopen('$cpu_index/', timeout=5)" 2>/dev/null; then
                torch_index="$cpu_index"
            fi
        fi
        index_args=()
        [ -n "$torch_index" ] && index_args=(--extra-index-url "$torch_index")
        say "installing torch==$TORCH_VERSION in its own step (from ${torch_index:-the sources pip is configured with}; ASR_TORCH_INDEX picks another)"
        "$VPY" -m pip install -q --disable-pip-version-check ${index_args[@]+"${index_args[@]}"} "torch==$TORCH_VERSION"
        torch_checked=1
    fi
    spec="$ROOT"
    [ -n "$EXTRAS" ] && spec="$ROOT[$EXTRAS]"
    say "installing the project (${EXTRAS:-no extras}) into .venv"
    "$VPY" -m pip install -q --disable-pip-version-check -e "$spec"
    echo "$want" >>"$stamp"
fi

if [ -n "${ASR_TORCH_INDEX:-}" ] && [ -z "${torch_checked:-}" ]; then  # asked for a build, but one is there already
    have="$("$VPY" -c "import torch; print(torch.__version__)" 2>/dev/null || true)"
    [ -n "$have" ] && say "ASR_TORCH_INDEX is set but .venv already has torch $have, which is kept: to install the build of $ASR_TORCH_INDEX, run .venv/bin/pip uninstall -y torch first"
fi

export PATH="$ROOT/.venv/bin:$PATH"
export VIRTUAL_ENV="$ROOT/.venv"
