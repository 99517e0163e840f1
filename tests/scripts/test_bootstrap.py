"""scripts/bootstrap.sh's choice of torch build and its pip steps, run for real on a copy of the
script whose ``.venv/bin/python`` is a stand-in that logs each call: whether torch is installed,
whether PyTorch's CPU index answers, and whether the machine looks like an NVIDIA one are the
test's to set. No package is installed and nothing is downloaded."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# What the script runs besides .venv/bin/python (nvidia-smi only where a test puts it).
_TOOLS = ("bash", "cat", "cut", "dirname", "dpkg-query", "grep", "id", "sha256sum")

_FAKE_PYTHON = """#!/bin/bash
printf '%s\\n' "$*" >> "$FAKE_LOG"
case "$*" in
    *"import torch"*)
        [ -n "${FAKE_TORCH:-}" ] || exit 1
        [[ "$*" == *print* ]] && echo "$FAKE_TORCH"
        exit 0 ;;
    *urlopen*) exit "${FAKE_INDEX_RC:-0}" ;;
    *) exit 0 ;;
esac
"""


@pytest.fixture
def sandbox(tmp_path):
    if shutil.which("dpkg-query") is None or subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", "libsndfile1"], capture_output=True, text=True).stdout != "install ok installed":
        pytest.fail("needs dpkg-query and libsndfile1: run `bash tests/run.sh`, which installs them")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", repo / "scripts")
    shutil.copy(ROOT / "pyproject.toml", repo)
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(_FAKE_PYTHON)
    (venv_bin / "python").chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in _TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return repo, bin_dir, tmp_path / "python-calls.log"


def _bootstrap(sandbox, extras="dev", nvidia_smi=False, probes=(), **env):
    repo, bin_dir, log = sandbox
    if nvidia_smi:
        (bin_dir / "nvidia-smi").write_text("#!/bin/bash\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    full_env = {"PATH": str(bin_dir), "HOME": str(repo), "FAKE_LOG": str(log), "ASR_NEEDS_TTS": "0",
                "ASR_NVIDIA_PROBES": " ".join(str(p) for p in probes), **env}
    r = subprocess.run(["bash", "-c", f'source scripts/bootstrap.sh "{extras}" && echo "PATH=$PATH"'],
                       cwd=repo, env=full_env, capture_output=True, text=True, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return r, calls


def _torch_install(calls):
    torch = [c for c in calls if c.startswith("-m pip install") and "torch==2.13.0" in c]
    return torch[0] if len(torch) == 1 else torch


def test_no_gpu_takes_the_cpu_index_when_it_answers(sandbox):
    repo = sandbox[0]
    r, calls = _bootstrap(sandbox)
    assert r.returncode == 0, r.stderr
    assert _torch_install(calls) == f"-m pip install -q --disable-pip-version-check --extra-index-url {CPU_INDEX} torch==2.13.0"
    assert calls[-1] == f"-m pip install -q --disable-pip-version-check -e {repo}[dev]"  # after torch
    assert f"from {CPU_INDEX}" in r.stderr
    assert f"PATH={repo}/.venv/bin:" in r.stdout
    # Installed: a second run with the same extras makes no pip call; other extras do.
    r, calls = _bootstrap(sandbox, FAKE_TORCH="2.13.0+cpu")
    assert r.returncode == 0 and not [c for c in calls if "pip" in c]
    r, calls = _bootstrap(sandbox, extras="dev,serve", FAKE_TORCH="2.13.0+cpu")
    assert [c for c in calls if "pip" in c] == [f"-m pip install -q --disable-pip-version-check -e {repo}[dev,serve]"]


def test_no_gpu_and_no_answer_uses_pips_own_sources(sandbox):
    r, calls = _bootstrap(sandbox, FAKE_INDEX_RC="1")
    assert r.returncode == 0, r.stderr
    assert any("urlopen" in c for c in calls)
    assert _torch_install(calls) == "-m pip install -q --disable-pip-version-check torch==2.13.0"
    assert "from the sources pip is configured with" in r.stderr


@pytest.mark.parametrize("how", ["nvidia-smi", "driver file"])
def test_an_nvidia_machine_gets_pips_torch_without_asking_the_cpu_index(sandbox, tmp_path, how):
    probe = tmp_path / "nvidiactl"
    probe.touch()
    r, calls = _bootstrap(sandbox, nvidia_smi=how == "nvidia-smi", probes=[probe] if how == "driver file" else [])
    assert r.returncode == 0, r.stderr
    assert not any("urlopen" in c for c in calls)
    assert _torch_install(calls) == "-m pip install -q --disable-pip-version-check torch==2.13.0"


def test_asr_torch_index_names_the_index_or_none(sandbox):
    r, calls = _bootstrap(sandbox, ASR_TORCH_INDEX="https://example.invalid/whl/cu128")
    assert r.returncode == 0, r.stderr
    assert not any("urlopen" in c for c in calls)
    assert _torch_install(calls).endswith("--extra-index-url https://example.invalid/whl/cu128 torch==2.13.0")
    (sandbox[0] / ".venv" / ".asr-installed").unlink()
    r, calls = _bootstrap(sandbox, ASR_TORCH_INDEX="")
    assert r.returncode == 0 and not any("urlopen" in c for c in calls)
    assert _torch_install(calls) == "-m pip install -q --disable-pip-version-check torch==2.13.0"


def test_an_installed_torch_is_kept_and_said_so(sandbox):
    """torch 2.13.0 already in .venv (any build): no torch step; with ASR_TORCH_INDEX set the
    script says that build is kept and how to switch."""
    r, calls = _bootstrap(sandbox, FAKE_TORCH="2.13.0+cpu", ASR_TORCH_INDEX="https://example.invalid/whl/cu128")
    assert r.returncode == 0, r.stderr
    assert _torch_install(calls) == []
    assert [c for c in calls if c.startswith("-m pip")] == [f"-m pip install -q --disable-pip-version-check -e {sandbox[0]}[dev]"]
    assert "already has torch 2.13.0+cpu, which is kept" in r.stderr


def test_missing_system_packages_are_named_when_not_root(sandbox):
    if os.geteuid() == 0:  # as root the script would install them: play a user by hiding apt-get and id -u
        bin_dir = sandbox[1]
        (bin_dir / "id").unlink()
        (bin_dir / "id").write_text("#!/bin/bash\necho 1000\n")
        (bin_dir / "id").chmod(0o755)
    r, calls = _bootstrap(sandbox, ASR_APT_PACKAGES="asr-no-such-package")
    assert r.returncode == 1
    assert "missing system packages: asr-no-such-package" in r.stderr
    assert "sudo apt-get install asr-no-such-package" in r.stderr
    assert calls == []  # stops before any pip step
